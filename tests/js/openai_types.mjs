// What the gateway sends, checked against the OpenAI Node SDK's TypeScript types by the TypeScript compiler.
// The SDK builds its objects without validating them: a field its type requires that the gateway leaves out
// (or a null where the type has none) is no error at run time, only wrong in a TypeScript app's hands. Each
// payload becomes `const name: SdkType = <payload>` in a source file that exists only in memory (in this
// folder, so "openai" resolves here), compiled with --strict; excess property checks catch misspelt fields.
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { env, run } from "./lib.mjs";

const HEADERS = { authorization: `Bearer ${env.apiKey}`, "content-type": "application/json" };
const WEATHER = { type: "object", properties: { city: { type: "string" } }, required: ["city"] };
const CHAT_TOOL = { type: "function", function: { name: "get_weather", parameters: WEATHER } };
const TOOL = { type: "function", name: "get_weather", parameters: WEATHER, strict: false };
const IMAGE = "data:image/png;base64,iVBORw0KGgo=";

async function call(method, path, body) {
  const res = await fetch(env.baseURL + path, { method, headers: HEADERS, body: body && JSON.stringify(body) });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return res.headers.get("content-type").startsWith("text/event-stream") ? events(await res.text()) : res.json();
}

function events(text) {
  return text.split("\n\n").map((frame) => frame.split("\n").find((l) => l.startsWith("data: ")))
    .filter((line) => line && line !== "data: [DONE]").map((line) => JSON.parse(line.slice(6)));
}

/** What is left out of a payload before the check, each for a reason that is not the gateway's to change:
 * OpenAI sends a Response's `user` and an unfinished one's `usage` as null where these types say "absent";
 * `max_tool_calls` and `store` (echoes OpenAI sends, in the Python SDK's Response) are missing from this SDK's
 * type (an extra field is harmless to it; a literal's excess property would hide the checks after it). */
function responseExtras(key, value) {
  return (value === null && (key === "user" || key === "usage")) || key === "max_tool_calls" || key === "store";
}
const LEFT_OUT = { Response: responseExtras, ResponseStreamEvent: responseExtras };

function asOpenAISends(type, payload) {
  const leftOut = LEFT_OUT[type] ?? (() => false);
  return JSON.parse(JSON.stringify(payload), (key, value) => {
    if (leftOut(key, value)) return undefined;
    return value?.object === "response" ? { output_text: "", ...value } : value;  // the SDK adds output_text
  });
}

/** [SDK type, payload] of every kind the gateway sends, from the live subnet. */
async function payloads() {
  const out = [];
  const add = (type, list) => list.forEach((p) => out.push([type, asOpenAISends(type, p)]));
  const chat = (extra) => ({ model: "default", messages: [{ role: "user", content: "Paris?" }], ...extra });
  for (const extra of [{}, { tools: [CHAT_TOOL] }, { logprobs: true, top_logprobs: 2 }, { n: 2, max_tokens: 3 },
    { web_search_options: {} }, { response_format: { type: "json_object" } }]) {
    add("ChatCompletion", [await call("POST", "/chat/completions", chat(extra))]);
    add("ChatCompletionChunk", await call("POST", "/chat/completions", chat({ ...extra, stream: true,
      stream_options: { include_usage: true } })));
  }
  const legacy = { model: "default", prompt: "Paris?", max_tokens: 4, logprobs: 1 };
  add("Completion", [await call("POST", "/completions", legacy)]);
  add("CompletionChunk", await call("POST", "/completions", { ...legacy, stream: true }));
  add("SubnetModel", (await call("GET", "/models")).data);
  const input = [{ role: "user", content: [{ type: "input_text", text: "Weather?" }, { type: "input_image",
    image_url: IMAGE }] }];
  const first = await call("POST", "/responses", { model: "default", input, tools: [TOOL] });
  const callItem = first.output.find((item) => item.type === "function_call");
  const answered = await call("POST", "/responses", { model: "default", previous_response_id: first.id,
    tools: [TOOL], input: [{ type: "function_call_output", call_id: callItem.call_id, output: "21 C" }] });
  add("Response", [first, answered]);
  for (const extra of [{}, { tools: [TOOL] }, { max_output_tokens: 16 }, { tools: [{ type: "web_search" }] },
    { include: ["message.output_text.logprobs"], top_logprobs: 1 }, { background: true }]) {
    const body = { model: "default", input: "Paris?", ...extra };
    add("Response", [await call("POST", "/responses", body)]);
    add("ResponseStreamEvent", await call("POST", "/responses", { ...body, stream: true }));
  }
  add("ResponseItemList", [await call("GET", `/responses/${answered.id}/input_items`)]);
  const conversation = await call("POST", "/conversations", { items: input, metadata: { topic: "weather" } });
  await call("POST", "/responses", { model: "default", conversation: conversation.id, input: "And?" });
  add("Conversation", [conversation, await call("GET", `/conversations/${conversation.id}`)]);
  add("ConversationItemList", [await call("GET", `/conversations/${conversation.id}/items`)]);
  add("ConversationDeletedResource", [await call("DELETE", `/conversations/${conversation.id}`)]);
  return out;
}

const IMPORTS = `import type { ChatCompletion, ChatCompletionChunk } from "openai/resources/chat/completions";
import type { Completion, CompletionChoice } from "openai/resources/completions";
import type { Model } from "openai/resources/models";
import type { Response, ResponseStreamEvent } from "openai/resources/responses/responses";
import type { ResponseItemList } from "openai/resources/responses/input-items";
import type { Conversation, ConversationDeletedResource } from "openai/resources/conversations/conversations";
import type { ConversationItemList } from "openai/resources/conversations/items";
type SubnetModel = Model & { miners: number; miners_set_aside: number; tasks: Record<string, number> };  // the subnet's own fields
// A streamed legacy completion's choice has finish_reason null until its last chunk, as OpenAI streams it,
// though the SDK's Completion type (shared with the whole object) has no null.
type CompletionChunk = Omit<Completion, "choices"> & { choices: Array<Omit<CompletionChoice, "finish_reason"> & {
  finish_reason: CompletionChoice["finish_reason"] | null }> };
`;

/** The compiler's complaints about `source`, as if it were a file in this folder. */
function diagnostics(source) {
  const path = fileURLToPath(new URL("./payloads.generated.ts", import.meta.url));
  const options = { strict: true, noEmit: true, skipLibCheck: true, target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, version) => name === path ? ts.createSourceFile(name, source, version)
    : getSourceFile(name, version);
  host.fileExists = ((exists) => (name) => name === path || exists(name))(host.fileExists.bind(host));
  const program = ts.createProgram([path], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file?.fileName === path ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    const name = where >= 0 ? source.split("\n").slice(0, where + 1).findLast((l) => l.startsWith("export const"))
      : d.file?.fileName;
    return `${name?.slice(0, 60)}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`;
  });
}

await run({
  async "every payload has the SDK's type (tsc --strict)"() {
    const all = await payloads();
    const source = IMPORTS + all.map(([type, payload], i) =>
      `export const ${type}_${i}: ${type} = ${JSON.stringify(payload)};`).join("\n");
    const problems = diagnostics(source);
    if (problems.length) throw new Error(`${problems.length} type errors in ${all.length} payloads:\n`
      + problems.slice(0, 20).join("\n"));
    console.log(`${all.length} payloads type-checked`);
  },
});
