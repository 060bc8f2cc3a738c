import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  isHashedToken,
  KeyError,
  keyOf,
  keyToken,
  makeKey,
  MAX_TOKEN_LEN,
  nameToken,
  parseKey,
  parseKeyToken,
  parseNameToken,
  parseSubject,
  subjectForTable,
  subjectOf,
  tableKeyPrefix,
  TRUNCATE_TOKEN,
  truncateSubject,
} from "../../src/index.js";
import { repoRoot } from "../support/paths.js";

function validNatsToken(t: string): boolean {
  return t.length > 0 && [...t].every((c) => c >= "!" && c <= "~" && c !== "." && c !== "*" && c !== ">");
}

interface Vector {
  key: string;
  subject: string;
}
const vectors: Vector[] = JSON.parse(readFileSync(join(repoRoot(), "docs", "vectors", "subjects.json"), "utf8"));

test("docs/vectors/subjects.json: subjectOf gives every subject", () => {
  assert.ok(vectors.length >= 40);
  for (const v of vectors) assert.equal(subjectOf("walcast", v.key), v.subject, JSON.stringify(v.key));
});

test("docs/vectors/subjects.json: every subject is four valid tokens and reverses to its key", () => {
  let hashed = 0;
  for (const { key, subject } of vectors) {
    const tokens = subject.split(".");
    assert.equal(tokens.length, 4, subject);
    assert.ok(tokens.every(validNatsToken), subject);
    const k = parseKey(key);
    // Vector keys are canonical: they are what walcast itself would write.
    assert.equal(makeKey(k.schema, k.table, k.values), key);
    const s = parseSubject(subject, "walcast");
    assert.equal(s.schema, k.schema);
    assert.equal(s.table, k.table);
    if (isHashedToken(s.token)) {
      hashed++;
      const escaped = k.values
        .map((v) => (v === "" ? "~_" : [...Buffer.from(v)].map((b) => (/[A-Za-z0-9_-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : "~" + b.toString(16).toUpperCase().padStart(2, "0"))).join("")))
        .join(",");
      assert.ok(escaped.length > MAX_TOKEN_LEN);
      assert.equal(s.token, "~H" + createHash("sha256").update(escaped).digest("hex").toUpperCase());
      assert.throws(() => keyOf(subject), (e: unknown) => e instanceof KeyError && e.kind === "Hashed");
    } else {
      assert.ok(s.token.length <= MAX_TOKEN_LEN);
      assert.equal(keyOf(subject, "walcast"), key);
      assert.equal(keyOf(subject), key);
      assert.deepEqual(parseKeyToken(s.token), k.values);
    }
  }
  assert.ok(hashed >= 8, `only ${hashed} hashed vectors`);
});

test("the documented subject examples", () => {
  assert.equal(subjectOf("walcast", makeKey("public", "users", ["42"])), "walcast.public.users.42");
  assert.equal(subjectOf("walcast", makeKey("public", "items", ["17", "a.b c"])), "walcast.public.items.17,a~2Eb~20c");
  assert.equal(subjectOf("walcast", makeKey("public", "odd.table", [""])), "walcast.public.odd~2Etable.~_");
  assert.equal(makeKey("shop", "order_items", ["17", "3"]), "shop.order_items:17,3");
  assert.equal(makeKey("public", "odd.table", ["a.b"]), "public.odd%2Etable:a%2Eb");
  assert.equal(subjectForTable("walcast", "public", "users"), "walcast.public.users.*");
  assert.equal(truncateSubject("walcast", "public", "odd.table"), "walcast.public.odd~2Etable.~truncate");
  assert.equal(tableKeyPrefix("public", "a:b"), "public.a%3Ab:");
});

// Ports of the unit tests in src/wire/key.rs.
test("keys round trip with awkward characters", () => {
  const cases: Array<[string, string, string[]]> = [
    ["public", "users", ["42"]],
    ["my.schema", "ta:ble", ["a.b", "c,d", "e%f", ""]],
    ["public", "t", ["*", ">", " spaced out ", "tab\tnew\nline"]],
    ["s", "t", ["ünïcödé ✓"]],
  ];
  for (const [schema, table, values] of cases) {
    const key = makeKey(schema, table, values);
    assert.deepEqual(parseKey(key), { schema, table, values });
    const token = keyToken(values);
    assert.ok(validNatsToken(token), token);
    assert.deepEqual(parseKeyToken(token), values);
    for (const name of [schema, table]) {
      const t = nameToken(name);
      assert.ok(validNatsToken(t), t);
      assert.equal(parseNameToken(t), name);
    }
    assert.equal(subjectOf("walcast", key).split(".").length, 4);
  }
  assert.equal(makeKey("public", "users", ["42"]), "public.users:42");
  assert.equal(keyToken(["a b", "c.d"]), "a~20b,c~2Ed");
  assert.equal(keyToken([""]), "~_");
});

test("long keys hash to a fixed token", () => {
  const long = "x".repeat(1000);
  const token = keyToken([long]);
  assert.equal(token.length, 66);
  assert.ok(validNatsToken(token));
  assert.equal(token, keyToken([long]));
  assert.notEqual(token, keyToken([long.slice(1)]));
  assert.throws(() => parseKeyToken(token), (e: unknown) => e instanceof KeyError && e.kind === "Hashed");
  assert.equal(keyToken(["x".repeat(MAX_TOKEN_LEN)]).length, MAX_TOKEN_LEN);
  // The hash is of the escaped token, upper-case hex.
  assert.equal(keyToken(["x".repeat(201)]), "~H" + createHash("sha256").update("x".repeat(201)).digest("hex").toUpperCase());
});

test("the truncate token cannot collide with a key", () => {
  assert.throws(() => parseKeyToken(TRUNCATE_TOKEN), KeyError);
  assert.throws(() => parseKey("no-colon"), (e: unknown) => e instanceof KeyError && e.kind === "BadKey");
  assert.throws(() => parseKeyToken("a~zz"), KeyError);
  assert.throws(() => parseKeyToken("a.b"), KeyError);
  assert.throws(() => keyOf("walcast.public.t.~truncate"), KeyError);
});

test("key escapes are read as Rust reads them (u8::from_str_radix)", () => {
  // Non-canonical but accepted escapes: lower-case hex, another byte written escaped.
  assert.deepEqual(parseKey("public.t:a%2eb,%41").values, ["a.b", "A"]);
  assert.equal(subjectOf("walcast", "public.t:a%2eb"), "walcast.public.t.a~2Eb");
  // Rust's from_str_radix takes a leading '+': "%+F" is byte 0x0F.
  assert.deepEqual(parseKey("public.t:%+F").values, ["\u000f"]);
  for (const bad of ["public.t:100%", "public.t:%2", "public.t:%zz", "public.t:%-1", "public.t:%++", "public.t:%C3", "public.t:%é1", "public.t:%2é"]) {
    assert.throws(() => parseKey(bad), (e: unknown) => e instanceof KeyError && e.kind === "BadEscape", bad);
  }
  // Percent-escaped UTF-8 bytes make up characters.
  assert.deepEqual(parseKey("public.t:%C3%A9").values, ["é"]);
  // A token takes only upper-case hex.
  assert.throws(() => parseKeyToken("a~2e"), KeyError);
  assert.throws(() => parseNameToken("~C3"), KeyError); // not UTF-8 alone
});

test("subjects split with any prefix", () => {
  assert.deepEqual(parseSubject("a.b.public.users.42", "a.b"), { prefix: "a.b", schema: "public", table: "users", token: "42" });
  assert.equal(keyOf("a.b.public.users.42"), "public.users:42");
  assert.throws(() => keyOf("other.public.users.42", "walcast"), KeyError);
  assert.throws(() => keyOf("walcast.public.users"), KeyError);
  assert.throws(() => keyOf("walcast.public.users.42.x", "walcast"), KeyError);
});
