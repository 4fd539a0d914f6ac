// The chat box: streams each answer from /v1/chat/completions (server-sent events) into the page and shows its
// speed. Requests carry X-Flowring-Trace so their spans reach the timeline; the key travels in the cookie.
"use strict";

const conversation = [];

function bubble(role, text) {
  const box = document.createElement("div");
  box.className = `msg ${role}`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  box.appendChild(body);
  document.getElementById("conversation").appendChild(box);
  return box;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

async function ask(model, prompt, maxTokens, temperature) {
  conversation.push({role: "user", content: prompt});
  bubble("user", prompt);
  const box = bubble("assistant", "");
  const text = box.querySelector(".text");
  const speed = document.createElement("span");
  speed.className = "speed";
  box.appendChild(speed);
  const began = performance.now();
  let first = 0;
  let usage = null;
  let failure = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Flowring-Trace": "1"},
      body: JSON.stringify({model, messages: conversation, stream: true, max_tokens: maxTokens, temperature,
                            stream_options: {include_usage: true}}),
    });
    if (!response.ok) throw new Error(await errorOf(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop();
      for (const event of events) {
        const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (!first) first = performance.now();
          text.textContent += delta.content;
          box.dataset.streamed = String(text.textContent.length);
        }
      }
    }
  } catch (err) {
    failure = err.message || String(err);
  }
  const seconds = (performance.now() - began) / 1000;
  if (failure) {
    box.classList.add("failed");
    speed.textContent = `failed: ${failure}`;
    conversation.pop();
  } else {
    conversation.push({role: "assistant", content: text.textContent});
    const tokens = usage ? usage.completion_tokens : 0;
    const ttft = first ? `${Math.round(first - began)} ms` : "–";
    speed.textContent = `${tokens} tokens in ${seconds.toFixed(2)} s · ${(tokens / seconds).toFixed(1)} tokens/s` +
      ` · first token after ${ttft}`;
    box.dataset.tokens = String(tokens);
  }
  box.dataset.done = "true";
}

function setUpChat(modelName) {
  const form = document.getElementById("chat");
  const send = document.getElementById("send");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = document.getElementById("prompt").value.trim();
    if (!prompt || send.disabled) return;
    document.getElementById("prompt").value = "";
    send.disabled = true;
    try {
      const temperature = Number(document.getElementById("temperature").value);
      await ask(modelName(), prompt, Number(document.getElementById("max-tokens").value) || 64,
                Number.isFinite(temperature) ? temperature : 0.7);
    } finally {
      send.disabled = false;
    }
  });
  document.getElementById("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  document.getElementById("clear").addEventListener("click", () => {
    conversation.length = 0;
    document.getElementById("conversation").replaceChildren();
  });
}

window.flowringChat = {setUpChat};
