// The catch-up filter's key pattern: `*` is any run of characters, the rest literal.
import assert from "node:assert/strict";
import { test } from "node:test";
import { globMatches } from "../../src/index.js";

test("key patterns match runs of characters and nothing else", () => {
  assert.ok(globMatches("public.orders:*", "public.orders:42"));
  assert.ok(globMatches("public.orders:4*", "public.orders:42"));
  assert.ok(!globMatches("public.orders:5*", "public.orders:42"));
  assert.ok(globMatches("*:42", "public.orders:42"));
  assert.ok(globMatches("public.*:4*2", "public.orders:402"));
  assert.ok(!globMatches("public.*:4*3", "public.orders:402"));
  assert.ok(!globMatches("public.orders:42", "public.orders:421"));
  assert.ok(!globMatches("public.orders.42", "public.ordersX42"), "a dot is a dot");
  assert.ok(globMatches("*", ""));
});
