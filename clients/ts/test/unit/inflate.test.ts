import assert from "node:assert/strict";
import { test } from "node:test";
import { MAX_INFLATED, openRow, SealError } from "../../src/index.js";

const row = { key: "public.docs:1", op: "insert", sequence: 1, field: "value" as const };
const zstd = { compression: "zstd" };

/**
 * A zstd frame of RLE blocks (each 128 KiB of one byte, 4 bytes on the wire) that
 * inflates to `bytes` bytes: a few kilobytes that would take `bytes` of memory.
 */
function rleFrame(bytes: number, fill = 0x61): Uint8Array {
  const block = 128 * 1024;
  // Magic, no content size, no checksum, a 128 KiB window (log 17).
  const out: number[] = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
  for (let left = bytes; left > 0; left -= block) {
    const size = Math.min(block, left);
    const header = (left <= block ? 1 : 0) | (1 << 1) | (size << 3);
    out.push(header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff, fill);
  }
  return new Uint8Array(out);
}

test("MAX_INFLATED is the Rust client's bound (src/wire/seal.rs): 256 MiB", () => {
  assert.equal(MAX_INFLATED, 256 * 1024 * 1024);
});

test("a compressed row below the bound inflates (several blocks)", () => {
  const body = openRow(rleFrame(300 * 1024), zstd, row, undefined);
  assert.equal(body.length, 300 * 1024);
  assert.ok(body.every((b) => b === 0x61));
});

test("a row that inflates past MAX_INFLATED is refused with a clear error, not allocated", () => {
  const bomb = rleFrame(MAX_INFLATED + 1);
  assert.ok(bomb.length < 64 * 1024, `the bomb is ${bomb.length} bytes`);
  assert.throws(
    () => openRow(bomb, zstd, row, undefined),
    (e: Error) => e instanceof SealError && e.message === `the value of public.docs:1 does not decompress: inflates to more than ${MAX_INFLATED} bytes`,
  );
});

test("a frame declaring more content, or a larger window, than the bound is refused before inflating", () => {
  // Single segment, an 8-byte content size of 1 GiB, then one empty raw block.
  const size = 1024 * 1024 * 1024;
  const declared = new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0x01, 0, 0]);
  assert.equal(new DataView(declared.buffer).getUint32(5, true) + 2 ** 32 * new DataView(declared.buffer).getUint32(9, true), size);
  assert.throws(() => openRow(declared, zstd, row, undefined), /inflates to more than 268435456 bytes/);
  // A 1 GiB window (log 30): the buffer fzstd would allocate.
  const window = new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x01, 0, 0]);
  assert.throws(() => openRow(window, zstd, row, undefined), /inflates to more than 268435456 bytes/);
});
