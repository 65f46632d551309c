// The OpenAI Node SDK's chat surface against the local subnet: what a TypeScript app does with it.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { zodFunction, zodResponseFormat } from "openai/helpers/zod";
import { z } from "zod";
import { CHAT_MODEL, client, env, raised, run, user } from "./lib.mjs";

const City = z.object({ name: z.string(), population: z.number(), landmarks: z.array(z.string()) });
const weather = { type: "function", function: {
  name: "get_weather", description: "The weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } };

await run({
  async "create: typed completion and the subnet's headers"() {
    const { data, response } = await client().chat.completions
      .create({ model: "default", messages: user("Hello"), seed: 1 }).withResponse();
    assert.equal(data.object, "chat.completion");
    assert.equal(data.model, CHAT_MODEL);
    assert.equal(data.choices[0].finish_reason, "stop");
    assert.ok(data.choices[0].message.content.length > 0);
    assert.equal(data.choices[0].message.refusal, null);
    assert.ok(data.usage.total_tokens > 0);
    assert.ok(response.headers.get("x-request-id"));
    assert.match(response.headers.get("x-sn1-miner-uid"), /^\d+$/);
  },
  async "stream: for await over chunks, usage last"() {
    const stream = await client().chat.completions.create({
      model: CHAT_MODEL, messages: user("Stream"), stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const text = chunks.flatMap((c) => c.choices.map((ch) => ch.delta.content ?? "")).join("");
    assert.ok(chunks.length > 3 && text.endsWith("."));
    assert.equal(chunks[0].choices[0].delta.role, "assistant");
    assert.equal(chunks.at(-2).choices[0].finish_reason, "stop");
    assert.deepEqual(chunks.at(-1).choices, []);
    assert.ok(chunks.at(-1).usage.completion_tokens > 0);
  },
  async "logprobs: content and refusal (null when empty), as the SDK's types require, streamed or not"() {
    const body = { model: CHAT_MODEL, messages: user("Hello"), seed: 3, logprobs: true, top_logprobs: 2 };
    const whole = (await client().chat.completions.create(body)).choices[0].logprobs;
    assert.equal(whole.refusal, null);
    const streamed = [];
    for await (const chunk of await client().chat.completions.create({ ...body, stream: true })) {
      if (chunk.choices[0]?.logprobs) streamed.push(chunk.choices[0].logprobs);
    }
    assert.ok(streamed.length > 0 && streamed.every((l) => l.refusal === null));
    assert.deepEqual(streamed.flatMap((l) => l.content).map((t) => t.token), whole.content.map((t) => t.token));
  },
  async "stream helper: content events and finalChatCompletion agree"() {
    const stream = client().chat.completions.stream({ model: CHAT_MODEL, messages: user("Helper"), seed: 2 });
    let text = "";
    stream.on("content", (delta) => { text += delta; });
    const final = await stream.finalChatCompletion();
    assert.equal(final.choices[0].message.content, text);
    assert.equal(await stream.finalContent(), text);
  },
  async "tool call: one call, its arguments JSON"() {
    const out = await client().chat.completions.create({ model: CHAT_MODEL, messages: user("Weather in Paris?"),
      tools: [weather] });
    const choice = out.choices[0];
    assert.equal(choice.finish_reason, "tool_calls");
    assert.equal(choice.message.content, null);
    assert.equal(choice.message.tool_calls[0].function.name, "get_weather");
    assert.equal(typeof JSON.parse(choice.message.tool_calls[0].function.arguments).city, "string");
  },
  async "runTools: the loop calls the function and ends on an answer (streamed too)"() {
    for (const stream of [false, true]) {
      const calls = [];
      const runner = client().chat.completions.runTools({ model: CHAT_MODEL, messages: user("Weather in Paris?"),
        stream, tools: [zodFunction({ name: "get_weather", parameters: z.object({ city: z.string() }),
          function: async (args) => { calls.push(args); return { temperature: 21 }; } })] });
      const answer = await runner.finalContent();
      assert.equal(calls.length, 1, `stream=${stream}`);
      assert.ok(answer.length > 0);
      assert.deepEqual(runner.messages.map((m) => m.role), ["user", "assistant", "tool", "assistant"]);
    }
  },
  async "parse: zodResponseFormat gives a typed object, streamed or not"() {
    const format = zodResponseFormat(City, "city");
    const out = await client().chat.completions.parse({ model: CHAT_MODEL, messages: user("Paris"),
      response_format: format });
    assert.equal(typeof out.choices[0].message.parsed.population, "number");
    const streamed = await client().chat.completions.stream({ model: CHAT_MODEL, messages: user("Paris"),
      response_format: format }).finalChatCompletion();
    assert.deepEqual(streamed.choices[0].message.parsed, out.choices[0].message.parsed);
  },
  async "models.list and retrieve"() {
    const ids = [];
    for await (const model of client().models.list()) ids.push(model.id);
    assert.ok(ids.includes(CHAT_MODEL));
    assert.equal((await client().models.retrieve(CHAT_MODEL)).id, CHAT_MODEL);
  },
  async "auth: the api-key header works alone, and wins over the SDK's Bearer token"() {
    for (const authorization of [null, undefined]) {
      const c = client({ apiKey: "not-this-one", defaultHeaders: { "api-key": env.apiKey, authorization } });
      const out = await c.chat.completions.create({ model: "default", messages: user("Hi") });
      assert.ok(out.choices[0].message.content);
    }
  },
  async "errors: typed classes with status, code and param"() {
    const bad = await raised(client({ apiKey: "sn1-wrong" }).models.list());
    assert.ok(bad instanceof OpenAI.AuthenticationError);
    assert.equal(bad.code, "invalid_api_key");
    const missing = await raised(client().chat.completions.create({ model: "no/such-model", messages: user("x") }));
    assert.ok(missing instanceof OpenAI.NotFoundError);
    assert.equal(missing.status, 404);
    assert.deepEqual([missing.code, missing.param], ["model_not_found", "model"]);
    const invalid = await raised(client().chat.completions.create({ model: "default", messages: user("x"),
      temperature: 9 }));
    assert.ok(invalid instanceof OpenAI.BadRequestError);
    assert.deepEqual([invalid.code, invalid.param, invalid.type], ["decimal_above_max_value", "temperature",
      "invalid_request_error"]);
    assert.ok(invalid.requestID);
  },
  async "abort and timeout end the call with the SDK's errors"() {
    const controller = new AbortController();
    const call = client().chat.completions.create({ model: "default", messages: user("x") },
      { signal: controller.signal });
    controller.abort();
    assert.ok((await raised(call)) instanceof OpenAI.APIUserAbortError);
    // A network slower than the timeout, for sure: a 1 ms timeout raced the API's answer, and lost the race on a
    // fast host. The request is held until the SDK's timer aborts it, then sent as undici would, aborted.
    const late = (url, init) => new Promise((resolve, reject) => init.signal.addEventListener("abort",
      () => fetch(url, init).then(resolve, reject), { once: true }));
    const slow = await raised(client({ timeout: 50, fetch: late }).chat.completions.create({ model: "default",
      messages: user("x") }));
    assert.ok(slow instanceof OpenAI.APIConnectionTimeoutError);
  },
});
