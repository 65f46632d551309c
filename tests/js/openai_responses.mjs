// The OpenAI Node SDK's Responses API against the local subnet: create, continue, stream, parse, tools, files.
import assert from "node:assert/strict";
import { zodResponsesFunction, zodTextFormat } from "openai/helpers/zod";
import { z } from "zod";
import { CHAT_MODEL, client, run } from "./lib.mjs";

const City = z.object({ name: z.string(), population: z.number(), landmarks: z.array(z.string()) });
const PDF = `data:application/pdf;base64,${Buffer.from("%PDF-1.4\n%sn1\n").toString("base64")}`;

await run({
  async "create, then continue with previous_response_id"() {
    const first = await client().responses.create({ model: "default", input: "Hello", instructions: "Be brief." });
    assert.deepEqual([first.object, first.status, first.model], ["response", "completed", CHAT_MODEL]);
    assert.ok(first.output_text.length > 0, "the SDK's output_text convenience");
    assert.ok(first.usage.output_tokens > 0);
    const next = await client().responses.create({ model: "default", input: "And?", previous_response_id: first.id });
    assert.equal(next.previous_response_id, first.id);
    const items = await client().responses.inputItems.list(next.id);
    assert.equal(items.data.length, 3, "the first turn's input and answer, then this turn's input");
    assert.equal((await client().responses.retrieve(first.id)).id, first.id);
  },
  async "stream: events in OpenAI's order, numbered from 0"() {
    const stream = await client().responses.create({ model: CHAT_MODEL, input: "Stream", stream: true });
    const events = [];
    for await (const event of stream) events.push(event);
    const types = [...new Set(events.map((e) => e.type))];
    assert.deepEqual(types, ["response.created", "response.in_progress", "response.output_item.added",
      "response.content_part.added", "response.output_text.delta", "response.output_text.done",
      "response.content_part.done", "response.output_item.done", "response.completed"]);
    assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
    const text = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
    assert.equal(events.at(-1).response.output[0].content[0].text, text);
  },
  async "stream helper: finalResponse, also for an incomplete answer"() {
    const stream = client().responses.stream({ model: CHAT_MODEL, input: "Helper" });
    let text = "";
    stream.on("response.output_text.delta", (e) => { text += e.delta; });
    const final = await stream.finalResponse();
    assert.deepEqual([final.status, final.output_text], ["completed", text]);
    const cut = await client().responses.stream({ model: CHAT_MODEL, input: "x", max_output_tokens: 16 }).finalResponse();
    assert.deepEqual([cut.status, cut.incomplete_details.reason], ["incomplete", "max_output_tokens"]);
  },
  async "parse: zodTextFormat gives output_parsed, streamed or not"() {
    const text = { format: zodTextFormat(City, "city") };
    const out = await client().responses.parse({ model: CHAT_MODEL, input: "Paris", text });
    assert.equal(typeof out.output_parsed.population, "number");
    const streamed = await client().responses.stream({ model: CHAT_MODEL, input: "Paris", text }).finalResponse();
    assert.deepEqual(streamed.output_parsed, out.output_parsed);
  },
  async "a function call and its output, by previous_response_id"() {
    const tools = [zodResponsesFunction({ name: "get_weather", parameters: z.object({ city: z.string() }) })];
    const asked = await client().responses.parse({ model: CHAT_MODEL, input: "Weather in Paris?", tools });
    const call = asked.output.find((item) => item.type === "function_call");
    assert.equal(typeof call.parsed_arguments.city, "string");
    const answered = await client().responses.create({ model: CHAT_MODEL, previous_response_id: asked.id,
      input: [{ type: "function_call_output", call_id: call.call_id, output: '{"temperature": 21}' }] });
    assert.equal(answered.status, "completed");
    assert.ok(answered.output_text.length > 0);
  },
  async "an input_file with its file_data is served, as chat serves a file part"() {
    const out = await client().responses.create({ model: CHAT_MODEL, input: [{ role: "user", content: [
      { type: "input_text", text: "Summarise this." },
      { type: "input_file", filename: "notes.pdf", file_data: PDF }] }] });
    assert.equal(out.status, "completed");
  },
  async "conversations: create, answer in one, list its items"() {
    const conversation = await client().conversations.create({ items: [{ type: "message", role: "user",
      content: "Hi" }] });
    const out = await client().responses.create({ model: CHAT_MODEL, conversation: conversation.id, input: "Next?" });
    assert.equal(out.conversation.id, conversation.id);
    const items = [];
    for await (const item of client().conversations.items.list(conversation.id, { order: "asc" })) items.push(item);
    assert.deepEqual(items.map((i) => i.role), ["user", "user", "assistant"]);
    assert.ok((await client().conversations.delete(conversation.id)).deleted);
  },
});
