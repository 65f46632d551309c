// Rate limits as the OpenAI Node SDK meets them: a 429 is a RateLimitError the SDK retries by itself, waiting
// as long as Retry-After says (any wait: it has no cap), unless the answer says x-should-retry: false.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { client, createKey, raised, run, user } from "./lib.mjs";

/** The call's outcome, or "still waiting" after `ms` (the SDK asleep on a Retry-After). */
function within(ms, promise) {
  const guard = new Promise((resolve) => { setTimeout(() => resolve("still waiting"), ms).unref(); });
  return Promise.race([promise.then(() => "answered", (e) => e), guard]);
}

await run({
  async "a key's requests per minute: RateLimitError with a Retry-After the SDK may wait out"() {
    const c = client({ apiKey: await createKey({ rate_limit: 1 }) });
    await c.models.list();
    const e = await raised(c.models.list());
    assert.ok(e instanceof OpenAI.RateLimitError);
    assert.deepEqual([e.status, e.code, e.type], [429, "rate_limit_exceeded", "rate_limit_error"]);
    const wait = Number(e.headers.get("retry-after"));
    assert.ok(wait >= 59 && wait <= 61, `Retry-After ${wait}`);
    assert.equal(e.headers.get("x-should-retry"), null, "a minute's wait is retried");
  },
  async "a spent daily token budget raises at once, though the SDK retries 429s"() {
    const key = await createKey({ rate_limit: 100, daily_token_limit: 5 });
    await client({ apiKey: key }).chat.completions.create({ model: "default", messages: user("x") });
    const started = Date.now();
    const outcome = await within(10_000, client({ apiKey: key, maxRetries: 2 }).chat.completions.create(
      { model: "default", messages: user("x") }));
    assert.ok(outcome instanceof OpenAI.RateLimitError, `the SDK slept on the 429's Retry-After: ${outcome}`);
    assert.equal(outcome.code, "token_limit_exceeded");
    assert.ok(Number(outcome.headers.get("retry-after")) > 61, "until the UTC day ends");
    assert.ok(Date.now() - started < 5_000);
  },
});
