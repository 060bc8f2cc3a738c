export * from "./timestamp.js";
export { Float32, Float64, pack } from "./msgpack.js";
export * from "./codec.js";
export * from "./seal.js";
export * from "./key.js";
export * from "./transport.js";
export * from "./nats.js";
export * from "./replica.js";
export * from "./catchup.js";
