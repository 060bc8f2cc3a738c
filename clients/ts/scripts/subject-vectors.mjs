// Writes docs/vectors/subjects.json: [{key, subject}] for prefix "walcast", computed
// with this package's port of src/wire/key.rs (run `npm run build` first).
// Every key is canonical (`makeKey` output), so each vector also round-trips.
import { writeFileSync } from "node:fs";
import { makeKey, subjectOf } from "../dist/src/key.js";

const rows = [
  // [schema, table, values]
  ["public", "users", ["42"]],
  ["shop", "order_items", ["17", "3"]],
  ["public", "items", ["17", "a.b c"]],
  ["public", "odd.table", [""]],
  ["public", "t", ["a.b.c"]],
  ["public", "t", ["*"]],
  ["public", "t", [">"]],
  ["public", "t", ["a*b>c"]],
  ["public", "t", [" spaced out "]],
  ["public", "t", ["tab\tnew\nline\rcr"]],
  ["public", "t", ["nul\u0000soh\u0001us\u001fdel\u007f"]],
  ["public", "t", ["\u0085\u00a0"]],
  ["public", "t", [""]],
  ["public", "t", ["", "", ""]],
  ["public", "t", ["a", ""]],
  ["", "", [""]],
  ["s", "t", ["ünïcödé ✓"]],
  ["s", "t", ["日本語"]],
  ["s", "t", ["😀𝄞"]],
  ["public", "t", ["~"]],
  ["public", "t", ["~_"]],
  ["public", "t", ["~truncate"]],
  ["public", "t", ["a~2Eb"]],
  ["public", "t", ["~H" + "0".repeat(64)]],
  ["public", "t", ["100%"]],
  ["public", "t", ["%25"]],
  ["public", "t", ["a:b,c"]],
  ["public", "t", ["a-b_c-D_9"]],
  ["public", "t", ["!\"#$&'()+/;<=?@[\\]^`{|}"]],
  ["my.schema", "ta:ble", ["a.b", "c,d", "e%f", ""]],
  ["My Schema", "Tab-le_1", ["X"]],
  ["sch~ema", "tab%le", ["1"]],
  ["Ünï", "tâble", ["ü"]],
  ["public", "t", ["-1", "1.5e10", "2024-02-29 12:34:56+00"]],
  ["public", "t", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]],
  // Long keys: a key token longer than 200 bytes is hashed.
  ["public", "t", ["x".repeat(200)]],
  ["public", "t", ["x".repeat(201)]],
  ["public", "t", ["x".repeat(500)]],
  ["public", "t", ["x".repeat(1000)]],
  ["public", "t", ["x".repeat(999)]],
  ["public", "t", ["x".repeat(100), "y".repeat(99)]],
  ["public", "t", ["x".repeat(100), "y".repeat(100)]],
  ["public", "t", [" ".repeat(66), "ab"]],
  ["public", "t", [" ".repeat(67)]],
  ["public", "t", ["é".repeat(33), "x"]],
  ["public", "t", ["é".repeat(34)]],
  ["public", "t", ["", "x".repeat(198)]],
  ["public", "t", ["", "x".repeat(199)]],
  ["public", "t", ["a.b".repeat(100)]],
  ["a".repeat(300), "b".repeat(300), ["1"]],
  ["a".repeat(300), "b".repeat(300), ["x".repeat(300)]],
];

const vectors = rows.map(([schema, table, values]) => {
  const key = makeKey(schema, table, values);
  return { key, subject: subjectOf("walcast", key) };
});
const out = new URL("../../../docs/vectors/subjects.json", import.meta.url);
// DEL and the C1 controls are written as \u escapes too (JSON.stringify only escapes C0).
const json = JSON.stringify(vectors, null, 2).replace(
  /[\u007f-\u009f]/g,
  (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"),
);
writeFileSync(out, json + "\n");
console.log(`${vectors.length} vectors written to ${out.pathname}`);
