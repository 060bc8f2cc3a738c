/**
 * The MessagePack timestamp extension (type -1), as walcast writes it for
 * `commit_ts`, `timestamp` and `timestamptz` values (docs/envelope.md).
 *
 * `seconds` is a `bigint` (always, whatever its size): PostgreSQL's `infinity` and
 * `-infinity` are the sentinels `seconds = i64::MAX` / `i64::MIN` with zero
 * nanoseconds ({@link Timestamp.INFINITY}, {@link Timestamp.NEG_INFINITY}), which no
 * JavaScript `number` or `Date` can hold. BC instants have negative seconds.
 */

const I64_MAX = (1n << 63n) - 1n;
const I64_MIN = -(1n << 63n);
/** The largest |milliseconds| a JavaScript Date holds. */
const DATE_MAX_MS = 8.64e15;

export class Timestamp {
  /** Seconds since 1970-01-01T00:00:00Z (negative before). */
  readonly seconds: bigint;
  /** Nanoseconds within the second, 0 ≤ n < 1e9 (walcast writes whole microseconds). */
  readonly nanoseconds: number;

  /** PostgreSQL `infinity`. */
  static readonly INFINITY: Timestamp = new Timestamp(I64_MAX, 0);
  /** PostgreSQL `-infinity`. */
  static readonly NEG_INFINITY: Timestamp = new Timestamp(I64_MIN, 0);

  constructor(seconds: bigint | number, nanoseconds = 0) {
    const s = typeof seconds === "bigint" ? seconds : BigInt(seconds);
    if (s < I64_MIN || s > I64_MAX) throw new RangeError(`timestamp seconds ${s} outside i64`);
    if (!Number.isInteger(nanoseconds) || nanoseconds < 0 || nanoseconds > 0xffffffff) {
      throw new RangeError(`timestamp nanoseconds ${nanoseconds} outside u32`);
    }
    this.seconds = s;
    this.nanoseconds = nanoseconds;
  }

  /** From a Date (millisecond precision). */
  static fromDate(d: Date): Timestamp {
    return Timestamp.fromEpochMillis(d.getTime());
  }

  /** From milliseconds since the epoch (an integer). */
  static fromEpochMillis(ms: number): Timestamp {
    if (!Number.isSafeInteger(ms)) throw new RangeError(`not an integer millisecond count: ${ms}`);
    const s = Math.floor(ms / 1000);
    return new Timestamp(BigInt(s), (ms - s * 1000) * 1_000_000);
  }

  /** From microseconds since the epoch (as PostgreSQL counts). */
  static fromEpochMicros(us: bigint): Timestamp {
    let s = us / 1_000_000n;
    let r = us % 1_000_000n;
    if (r < 0n) {
      r += 1_000_000n;
      s -= 1n;
    }
    return new Timestamp(s, Number(r) * 1000);
  }

  /** Read a MessagePack timestamp extension body (4, 8 or 12 bytes). */
  static fromExtBytes(data: Uint8Array): Timestamp {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    switch (data.length) {
      case 4:
        return new Timestamp(BigInt(view.getUint32(0)), 0);
      case 8: {
        const v = view.getBigUint64(0);
        return new Timestamp(v & 0x3_ffff_ffffn, Number(v >> 34n));
      }
      case 12:
        return new Timestamp(view.getBigInt64(4), view.getUint32(0));
      default:
        throw new RangeError(`a timestamp extension has 4, 8 or 12 bytes, not ${data.length}`);
    }
  }

  /** The extension body: the 32-, 64- or 96-bit form, the smallest that holds it. */
  toExtBytes(): Uint8Array {
    const s = this.seconds;
    const n = BigInt(this.nanoseconds);
    if (s >> 34n === 0n) {
      const data64 = (n << 34n) | s;
      if ((data64 & 0xffff_ffff_0000_0000n) === 0n) {
        const out = new Uint8Array(4);
        new DataView(out.buffer).setUint32(0, Number(data64));
        return out;
      }
      const out = new Uint8Array(8);
      new DataView(out.buffer).setBigUint64(0, data64 & 0xffff_ffff_ffff_ffffn);
      return out;
    }
    const out = new Uint8Array(12);
    const view = new DataView(out.buffer);
    view.setUint32(0, this.nanoseconds);
    view.setBigInt64(4, s);
    return out;
  }

  get isInfinity(): boolean {
    return this.seconds === I64_MAX && this.nanoseconds === 0;
  }

  get isNegInfinity(): boolean {
    return this.seconds === I64_MIN && this.nanoseconds === 0;
  }

  /** Neither sentinel. */
  get isFinite(): boolean {
    return !this.isInfinity && !this.isNegInfinity;
  }

  /** Milliseconds since the epoch (fraction truncated toward -∞); ±Infinity for the sentinels. */
  toEpochMillis(): number {
    if (this.isInfinity) return Infinity;
    if (this.isNegInfinity) return -Infinity;
    return Number(this.seconds * 1000n + BigInt(Math.floor(this.nanoseconds / 1_000_000)));
  }

  /** Microseconds since the epoch (exact for what PostgreSQL stores). Throws for the sentinels. */
  toEpochMicros(): bigint {
    if (!this.isFinite) throw new RangeError(`${this.toString()} has no microsecond count`);
    return this.seconds * 1_000_000n + BigInt(Math.floor(this.nanoseconds / 1000));
  }

  /** A Date (millisecond precision). Throws a RangeError for the sentinels and beyond Date's range. */
  toDate(): Date {
    const ms = this.toEpochMillis();
    if (!Number.isFinite(ms) || Math.abs(ms) > DATE_MAX_MS) {
      throw new RangeError(`${this.toString()} does not fit a Date`);
    }
    return new Date(ms);
  }

  /**
   * RFC 3339 in UTC with microseconds, as walcast prints it
   * (`2024-02-29T12:34:56.789012Z`), or `infinity` / `-infinity`.
   */
  toString(): string {
    if (this.isInfinity) return "infinity";
    if (this.isNegInfinity) return "-infinity";
    let days = this.seconds / 86_400n;
    let secs = this.seconds % 86_400n;
    if (secs < 0n) {
      secs += 86_400n;
      days -= 1n;
    }
    const [y, m, d] = civilFromDays(days);
    const sec = Number(secs);
    const pad = (v: number | bigint, w: number) => {
      const neg = typeof v === "bigint" ? v < 0n : v < 0;
      const abs = (neg ? -v : v).toString().padStart(w, "0");
      return neg ? "-" + abs : abs;
    };
    return (
      `${pad(y, 4)}-${pad(m, 2)}-${pad(d, 2)}T${pad(Math.floor(sec / 3600), 2)}:` +
      `${pad(Math.floor(sec / 60) % 60, 2)}:${pad(sec % 60, 2)}.${pad(Math.floor(this.nanoseconds / 1000), 6)}Z`
    );
  }

  toISOString(): string {
    return this.toString();
  }

  toJSON(): string {
    return this.toString();
  }

  /** How Node's console.log / util.inspect show it: `Timestamp(2024-02-29T12:34:56.789012Z)`. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    const sub = this.nanoseconds % 1000 === 0 ? "" : ` +${this.nanoseconds % 1000}ns`;
    return `Timestamp(${this.toString()}${sub})`;
  }

  equals(other: Timestamp): boolean {
    return this.seconds === other.seconds && this.nanoseconds === other.nanoseconds;
  }

  compare(other: Timestamp): number {
    if (this.seconds !== other.seconds) return this.seconds < other.seconds ? -1 : 1;
    return this.nanoseconds - other.nanoseconds;
  }
}

/** Howard Hinnant's civil_from_days, on bigint days since 1970-01-01. */
function civilFromDays(z0: bigint): [bigint, number, number] {
  const z = z0 + 719_468n;
  const era = (z >= 0n ? z : z - 146_096n) / 146_097n;
  const doe = z - era * 146_097n;
  const yoe = (doe - doe / 1460n + doe / 36_524n - doe / 146_096n) / 365n;
  const y = yoe + era * 400n;
  const doy = doe - (365n * yoe + yoe / 4n - yoe / 100n);
  const mp = (5n * doy + 2n) / 153n;
  const d = Number(doy - (153n * mp + 2n) / 5n + 1n);
  const m = Number(mp < 10n ? mp + 3n : mp - 9n);
  return [m <= 2 ? y + 1n : y, m, d];
}
