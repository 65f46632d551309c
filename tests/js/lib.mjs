// Shared by the scripts here: the local subnet's address and keys (from the environment the pytest file
// sets), a client, and a runner that names the check that failed.
import OpenAI from "openai";

export const env = {
  api: process.env.SN1_API,
  baseURL: process.env.SN1_BASE_URL,
  apiKey: process.env.SN1_API_KEY,
  adminKey: process.env.SN1_ADMIN_KEY,
};

export const CHAT_MODEL = "sn1/deterministic";
export const user = (content) => [{ role: "user", content }];

/** An OpenAI client on the local subnet; no retries unless a check asks for them. */
export function client(options = {}) {
  return new OpenAI({ baseURL: env.baseURL, apiKey: env.apiKey, maxRetries: 0, timeout: 30_000, ...options });
}

/** A fresh API key made with the admin API (a rate limit or a daily token limit of its own). */
export async function createKey(params) {
  const res = await fetch(`${env.api}/api_management/create-api-key/`, {
    method: "POST", headers: { "admin-key": env.adminKey, "content-type": "application/json" },
    body: JSON.stringify({ name: "js-client-tests", ...params }),
  });
  if (!res.ok) throw new Error(`create-api-key: ${res.status} ${await res.text()}`);
  return (await res.json()).api_key;
}

/** The error a call raises (a check fails if it answers). */
export async function raised(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error("expected an error, the call answered");
}

/** Run each named check in order; print one line per check; exit 1 naming every check that failed. */
export async function run(checks) {
  const failed = [];
  for (const [name, check] of Object.entries(checks)) {
    const started = Date.now();
    try {
      await check();
      console.log(`ok   ${name} (${Date.now() - started} ms)`);
    } catch (e) {
      failed.push(name);
      console.log(`FAIL ${name}: ${e?.stack ?? e}`);
    }
  }
  if (failed.length) {
    console.log(`failed: ${failed.join(", ")}`);
    process.exit(1);
  }
}
