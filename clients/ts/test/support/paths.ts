import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The walcast repository root (the directory holding Cargo.toml above clients/ts). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "Cargo.toml")) && existsSync(join(dir, "clients"))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error("cannot find the walcast repository root above " + fileURLToPath(import.meta.url));
    dir = up;
  }
}
