// The chat page of `parcae serve`: streams replies from /v1/chat/completions (fetch and a
// ReadableStream read as Server-Sent Events), shows tokens/s and loop steps per token, and sends
// the depth (num_steps) and temperature chosen above, and the API key if one is typed (as
// `Authorization: Bearer KEY`; kept in this tab's sessionStorage). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = [];
let modelId = null;
let busy = false;

function headers(extra) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers({}) });
    if (response.status === 401) {
      setStatus("this server needs an API key: type it above");
      return;
    }
    const card = (await response.json()).data[0];
    modelId = card.id;
    $("model-name").textContent = card.id;
    const depth = $("num-steps");
    if (card.looped) {
      depth.value = card.num_steps;
      depth.max = card.max_num_steps;
    } else {
      depth.disabled = true;
      depth.title = "this model does not loop";
    }
  } catch (error) {
    setStatus("cannot reach the server: " + error);
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

function addMessage(role, text) {
  const element = document.createElement("div");
  element.className = "message " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = text;
  element.append(label, body);
  $("transcript").append(element);
  element.scrollIntoView({ block: "end" });
  return body;
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" || $(id).disabled ? undefined : Number(value);
}

// Yields each parsed `data:` payload of an SSE response body.
async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  busy = true;
  $("send").disabled = true;
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const body = {
    messages: conversation,
    stream: true,
    temperature: number("temperature"),
    max_tokens: number("max-tokens"),
    num_steps: number("num-steps"),
  };
  if (modelId) body.model = modelId;
  setStatus("generating…");
  const started = performance.now();
  let first = null;
  let tokens = 0;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || response.statusText);
    }
    for await (const chunk of serverSentEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      const piece = choice && choice.delta && choice.delta.content;
      if (piece) {
        tokens += 1;
        if (first === null) first = performance.now();
        reply.textContent += piece;
        reply.parentElement.scrollIntoView({ block: "end" });
        const seconds = (performance.now() - started) / 1000;
        $("tokens-per-second").textContent = (tokens / seconds).toFixed(1) + " tokens/s";
      }
      if (chunk.usage) {
        const seconds = (performance.now() - started) / 1000;
        const generated = chunk.usage.completion_tokens;
        $("tokens-per-second").textContent = (generated / seconds).toFixed(1) + " tokens/s";
        $("loop-steps").textContent = chunk.usage.loop_steps.toFixed(2) + " loop steps/token";
      }
      if (choice && choice.finish_reason) setStatus("done (" + choice.finish_reason + ")");
    }
    conversation.push({ role: "assistant", content: reply.textContent });
  } catch (error) {
    conversation.pop();
    reply.parentElement.classList.add("error");
    reply.textContent = String(error.message || error);
    setStatus("error");
  } finally {
    busy = false;
    $("send").disabled = false;
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || busy) return;
  $("message").value = "";
  send(text);
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("reset").addEventListener("click", () => {
  conversation.length = 0;
  $("transcript").replaceChildren();
  setStatus("ready");
});

const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("parcae-api-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("parcae-api-key", keyInput.value.trim());
  if (!modelId) loadModel();
});
loadModel();
