// postern: passkeys (WebAuthn). Forms marked data-passkey="register" (the 2-Step
// page, the forced enrollment) or "login" (the second step, "Confirm it is you")
// ask the server for the ceremony's options
// (data-begin), let the browser create or use the passkey, and send its answer
// back (data-finish). Binary fields travel as base64url.
"use strict";
(function () {
  function toBuffer(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  function toText(buffer) {
    if (!buffer) return null;
    const bytes = new Uint8Array(buffer);
    let bin = "";
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  // The server's JSON has nulls where the browser wants nothing at all.
  function clean(value) {
    if (Array.isArray(value)) return value.map(clean);
    if (value && typeof value === "object") {
      const out = {};
      for (const [k, v] of Object.entries(value)) if (v !== null) out[k] = clean(v);
      return out;
    }
    return value;
  }
  async function call(url, csrf, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) throw new Error(data.error || "The server answered " + response.status + ".");
    return data;
  }
  async function register(form, csrf) {
    const begun = await call(form.dataset.begin, csrf, {});
    const options = clean(begun.options).publicKey;
    options.challenge = toBuffer(options.challenge);
    options.user.id = toBuffer(options.user.id);
    (options.excludeCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    const made = await navigator.credentials.create({ publicKey: options });
    const r = made.response;
    const credential = {
      id: made.id,
      rawId: toText(made.rawId),
      type: made.type,
      response: {
        attestationObject: toText(r.attestationObject),
        clientDataJSON: toText(r.clientDataJSON),
        transports: r.getTransports ? r.getTransports() : undefined,
      },
      extensions: {},
    };
    const name = form.querySelector("[name=name]").value;
    return call(form.dataset.finish, csrf, { ceremony: begun.ceremony, name: name, credential: credential });
  }
  async function signIn(form, csrf) {
    const begun = await call(form.dataset.begin, csrf, {});
    const options = clean(begun.options).publicKey;
    options.challenge = toBuffer(options.challenge);
    (options.allowCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    const used = await navigator.credentials.get({ publicKey: options });
    const r = used.response;
    const credential = {
      id: used.id,
      rawId: toText(used.rawId),
      type: used.type,
      response: {
        authenticatorData: toText(r.authenticatorData),
        clientDataJSON: toText(r.clientDataJSON),
        signature: toText(r.signature),
        userHandle: toText(r.userHandle),
      },
      extensions: {},
    };
    const next = form.querySelector("[name=next]");
    // "Don't ask again on this browser", in the code form beside this one.
    const remember = document.querySelector("input[name=remember]");
    return call(form.dataset.finish, csrf, {
      ceremony: begun.ceremony,
      credential: credential,
      next: next ? next.value : "",
      remember: Boolean(remember && remember.checked),
    });
  }
  function wire(form) {
    if (form.dataset.wired) return;
    form.dataset.wired = "1";
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const error = form.parentElement.querySelector("[data-passkey-error]");
      if (error) error.hidden = true;
      const csrf = form.querySelector("[name=csrf]").value;
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        if (!window.PublicKeyCredential) throw new Error("This browser does not support passkeys.");
        const done = form.dataset.passkey === "register" ? await register(form, csrf) : await signIn(form, csrf);
        window.location.assign(done.redirect);
      } catch (e) {
        if (error) {
          error.textContent = e.name === "NotAllowedError"
            ? "The passkey request was cancelled or timed out."
            : e.message;
          error.hidden = false;
        }
        button.disabled = false;
      }
    });
  }
  document.querySelectorAll("form[data-passkey]").forEach(wire);
})();
