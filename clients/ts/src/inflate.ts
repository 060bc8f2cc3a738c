/**
 * Inflating a compressed row, bounded: a zstd frame (or several) may inflate to at
 * most {@link MAX_INFLATED} bytes, the bound of the Rust client (`MAX_INFLATED` in
 * src/wire/seal.rs), so a small envelope cannot make a consumer allocate gigabytes (a
 * decompression bomb). Each frame's header is read first (its declared content size
 * and window must fit, or nothing is allocated), then the frames are inflated block
 * by block with fzstd's streaming decoder, counting what comes out.
 */
import { Decompress } from "fzstd";

/** The most a compressed row may inflate to: 256 MiB, as in the Rust client. */
export const MAX_INFLATED = 256 * 1024 * 1024;

const ZSTD_MAGIC = 0xfd2fb528;
const tooLarge = () => new Error(`inflates to more than ${MAX_INFLATED} bytes`);

/** `frames` inflated; throws (with "inflates to more than …") past {@link MAX_INFLATED}. */
export function inflateBounded(frames: Uint8Array, max: number = MAX_INFLATED): Uint8Array {
  checkHeaders(frames, max);
  const chunks: Uint8Array[] = [];
  let total = 0;
  const stream = new Decompress((chunk) => {
    total += chunk.length;
    if (total > max) throw tooLarge();
    if (chunk.length > 0) chunks.push(chunk.slice());
  });
  stream.push(frames, true);
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * Walk the frames' headers and blocks (without inflating): a frame declaring more
 * content than `max`, or a window larger than `max` (the buffer the decoder would
 * allocate), is refused before anything is allocated.
 */
function checkHeaders(d: Uint8Array, max: number): void {
  const view = new DataView(d.buffer, d.byteOffset, d.byteLength);
  let at = 0;
  while (at + 4 <= d.length) {
    const magic = view.getUint32(at, true);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      // A skippable frame: its size follows.
      if (at + 8 > d.length) return;
      at += 8 + view.getUint32(at + 4, true);
      continue;
    }
    if (magic !== ZSTD_MAGIC || at + 5 > d.length) return; // the decoder says what is wrong
    const flags = d[at + 4]!;
    const single = (flags >> 5) & 1;
    const checksum = (flags >> 2) & 1;
    const dictBytes = [0, 1, 2, 4][flags & 3]!;
    const fcsBytes = flags >> 6 ? 1 << (flags >> 6) : single;
    let p = at + 5;
    const windowByte = single ? undefined : d[p++];
    p += dictBytes;
    if (p + fcsBytes > d.length) return;
    let size = 0;
    for (let i = fcsBytes - 1; i >= 0; i--) size = size * 256 + d[p + i]!;
    if (fcsBytes === 2) size += 256;
    p += fcsBytes;
    if (fcsBytes > 0 && size > max) throw tooLarge();
    if (windowByte !== undefined) {
      const base = 2 ** (10 + (windowByte >> 3));
      if (base + (base / 8) * (windowByte & 7) > max) throw tooLarge();
    }
    // The blocks: a 3-byte header each (last flag, type, size); RLE blocks hold 1 byte.
    for (;;) {
      if (p + 3 > d.length) return;
      const h = d[p]! | (d[p + 1]! << 8) | (d[p + 2]! << 16);
      p += 3 + (((h >> 1) & 3) === 1 ? 1 : h >>> 3);
      if (h & 1) break;
    }
    at = p + (checksum ? 4 : 0);
  }
}
