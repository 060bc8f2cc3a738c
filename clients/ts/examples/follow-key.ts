import { connect } from "nats";
import { createClientReplica, NatsTransport, streamRefetch } from "@walcast/client";

const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });
const key = process.argv[2] ?? "public.accounts:1"; // <schema>.<table>:<primary key>
const replica = createClientReplica({
  key,
  transport: new NatsTransport({ connection: nc }), // prefix "walcast" by default
  refetch: streamRefetch(nc, key), // the key's last envelope in the stream WALCAST
  schemaVersion: "1.0", // another MAJOR is a skew: refetched, not applied
});
replica.onChange((row, meta) => console.log(meta.sequence, row)); // row: null once deleted
await replica.whenIdle(); // the initial refetch is done
console.log("now:", replica.status, replica.get());
process.on("SIGTERM", () => void nc.close().finally(() => replica.dispose()));
