import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

test("the README shows examples/follow-key.ts verbatim (the end-to-end tests run it)", () => {
  const readme = readFileSync(new URL("../../../README.md", import.meta.url), "utf8");
  const example = readFileSync(new URL("../../../examples/follow-key.ts", import.meta.url), "utf8");
  assert.ok(readme.includes("```ts\n" + example + "```\n"), "README.md and examples/follow-key.ts differ");
  assert.ok(example.split("\n").length <= 20);
});
