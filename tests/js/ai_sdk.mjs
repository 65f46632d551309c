// The Vercel AI SDK against the local subnet, through both of its OpenAI providers: @ai-sdk/openai-compatible
// (chat completions) and @ai-sdk/openai (the Responses API by default, chat with .chat()).
import assert from "node:assert/strict";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { APICallError, generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";
import { env, run } from "./lib.mjs";

const compatible = createOpenAICompatible({ name: "sn1", baseURL: env.baseURL, apiKey: env.apiKey,
  includeUsage: true, supportsStructuredOutputs: true });
const openai = createOpenAI({ baseURL: env.baseURL, apiKey: env.apiKey });
const MODELS = { "openai-compatible": compatible("default"), "openai (responses)": openai("default"),
  "openai.chat": openai.chat("default") };
const City = z.object({ name: z.string(), population: z.number(), landmarks: z.array(z.string()) });
const PDF = new TextEncoder().encode("%PDF-1.4\n%sn1\n");
const weather = tool({ description: "The weather in a city", inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => ({ city, temperature: 21 }) });

/** The same check through each provider, named by it. */
function each(name, check) {
  return Object.fromEntries(Object.entries(MODELS).map(([label, model]) => [`${label}: ${name}`, () => check(model)]));
}

await run({
  ...each("generateText", async (model) => {
    const out = await generateText({ model, prompt: "Hello", maxRetries: 0 });
    assert.equal(out.finishReason, "stop");
    assert.ok(out.text.length > 0 && out.usage.outputTokens > 0);
  }),
  ...each("streamText", async (model) => {
    const out = streamText({ model, prompt: "Hello", maxRetries: 0, onError: ({ error }) => { throw error; } });
    let text = "";
    for await (const delta of out.textStream) text += delta;
    assert.equal(text, await out.text);
    assert.equal(await out.finishReason, "stop");
    assert.ok((await out.usage).totalTokens > 0);
  }),
  ...each("tools: a call, its result, then the answer", async (model) => {
    const out = await generateText({ model, prompt: "Weather in Paris?", tools: { weather }, stopWhen: stepCountIs(3),
      maxRetries: 0 });
    assert.deepEqual(out.steps.map((s) => s.finishReason), ["tool-calls", "stop"]);
    assert.equal(out.steps[0].toolResults[0].output.temperature, 21);
  }),
  ...each("generateObject", async (model) => {
    const out = await generateObject({ model, schema: City, prompt: "Paris", maxRetries: 0 });
    assert.equal(typeof out.object.population, "number");
  }),
  ...each("a PDF file part", async (model) => {
    const out = await generateText({ model, maxRetries: 0, messages: [{ role: "user", content: [
      { type: "text", text: "Summarise this." }, { type: "file", data: PDF, mediaType: "application/pdf",
        filename: "notes.pdf" }] }] });
    assert.equal(out.finishReason, "stop");
  }),
  ...each("an unknown model is an APICallError 404", async (model) => {
    const other = model.provider.startsWith("sn1") ? compatible("no/such-model") : model.provider === "openai.chat"
      ? openai.chat("no/such-model") : openai("no/such-model");
    const e = await generateText({ model: other, prompt: "x", maxRetries: 0 }).then(() => null, (err) => err);
    assert.ok(APICallError.isInstance(e), String(e));
    assert.deepEqual([e.statusCode, e.isRetryable], [404, false]);
    assert.match(e.message, /no\/such-model/);
  }),
});
