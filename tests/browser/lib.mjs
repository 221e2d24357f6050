// What the browser scenarios share: checks that print `ok - ...` / `not ok - ...`,
// RFC 6238 TOTP codes, a tiny IMAP client and an SMTP sink, all on loopback and
// each wait bounded.
import crypto from 'node:crypto';
import net from 'node:net';

// ---- checks ---------------------------------------------------------------

let failures = 0;

/** A failed check ends its scenario (later steps build on it). */
export class CheckFailed extends Error {}

/** Runs `fn`; prints `ok - name` or `not ok - name: why`. `fn` may return a detail. */
export async function check(name, fn) {
  try {
    const detail = await fn();
    console.log(`ok - ${name}${typeof detail === 'string' && detail ? ` (${detail})` : ''}`);
  } catch (err) {
    failures += 1;
    console.log(`not ok - ${name}: ${String(err?.message ?? err).split('\n')[0]}`);
    throw new CheckFailed(name);
  }
}

/** Records a failure found outside `check` (a scenario that threw). */
export function fail(name, err) {
  failures += 1;
  console.log(`not ok - ${name}: ${String(err?.message ?? err).split('\n')[0]}`);
}

export const failureCount = () => failures;

/** Throws unless `cond`; the message says what a user would see instead. */
export function expect(cond, message) {
  if (!cond) throw new Error(message);
}

// ---- TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps) -------------------------

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function base32Decode(text) {
  let bits = '';
  for (const c of text.replace(/[\s=]/g, '').toUpperCase()) {
    const v = BASE32.indexOf(c);
    if (v < 0) throw new Error(`not base32: ${c}`);
    bits += v.toString(2).padStart(5, '0');
  }
  return Buffer.from((bits.match(/.{8}/g) ?? []).map((b) => parseInt(b, 2)));
}

/** The current 30-second step. */
export const totpStep = () => Math.floor(Date.now() / 1000 / 30);

/** The code an authenticator app shows for `secret` at `step`. */
export function totp(secret, step = totpStep()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const offset = mac[19] & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

/** Waits on the clock until the TOTP step is past `step` (at most 31 s). */
export async function nextTotpStep(step) {
  while (totpStep() <= step) await new Promise((r) => setTimeout(r, 250));
  return totpStep();
}

// ---- a tiny IMAP client ---------------------------------------------------

const quote = (s) => `"${s.replace(/["\\]/g, '\\$&')}"`;

/** An IMAP connection read line by line. Literals are not needed here. */
export class Imap {
  static connect(hostPort, timeoutMs = 10_000) {
    const [host, port] = hostPort.split(':');
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port: Number(port) });
      const timer = setTimeout(() => { sock.destroy(); reject(new Error(`no IMAP greeting from ${hostPort}`)); }, timeoutMs);
      sock.once('error', (err) => { clearTimeout(timer); reject(err); });
      const imap = new Imap(sock);
      imap.line(timeoutMs).then((greeting) => {
        clearTimeout(timer);
        if (!greeting?.startsWith('* OK')) reject(new Error(`greeting: ${greeting}`));
        else resolve(imap);
      }, reject);
    });
  }

  constructor(sock) {
    this.sock = sock;
    this.buf = '';
    this.lines = [];
    this.waiting = null;
    this.closed = false;
    this.tag = 0;
    sock.setEncoding('latin1');
    sock.on('data', (data) => {
      this.buf += data;
      let i;
      while ((i = this.buf.indexOf('\r\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 2);
      }
      this.wake();
    });
    sock.on('error', () => {});
    sock.on('close', () => { this.closed = true; this.wake(); });
  }

  wake() {
    const w = this.waiting;
    this.waiting = null;
    w?.();
  }

  /** The next line, or null once the server has closed the connection. */
  async line(timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no line from the server within ${timeoutMs / 1000} s`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiting = () => { clearTimeout(timer); resolve(); };
      });
    }
    return this.lines.shift();
  }

  /** Sends a command; returns its tagged status (`OK`, `NO`, `BAD`), text and untagged lines. */
  async command(text, timeoutMs = 10_000) {
    const tag = `t${++this.tag}`;
    this.sock.write(`${tag} ${text}\r\n`);
    const untagged = [];
    for (;;) {
      const line = await this.line(timeoutMs);
      if (line === null) throw new Error(`connection closed during ${text.split(' ')[0]}; saw ${untagged.join(' | ')}`);
      if (line.startsWith(`${tag} `)) {
        const [, status = '', rest = ''] = line.match(/^\S+ (\S+) ?(.*)$/) ?? [];
        return { status, text: rest, untagged };
      }
      untagged.push(line);
    }
  }

  login(user, password) {
    return this.command(`LOGIN ${quote(user)} ${quote(password)}`);
  }

  /** Starts IDLE and waits for the continuation. */
  async idle() {
    this.sock.write(`t${++this.tag} IDLE\r\n`);
    const line = await this.line();
    if (!line?.startsWith('+')) throw new Error(`IDLE: ${line}`);
  }

  /** Reads until a line matches `re` (null if the connection closed first). */
  async waitFor(re, timeoutMs = 15_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = await this.line(Math.max(1, deadline - Date.now()));
      if (line === null || re.test(line)) return line;
    }
  }

  /** Resolves true once the server has closed the connection (false after the bound). */
  async waitClosed(timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      try { await this.line(Math.max(1, deadline - Date.now())); } catch { return false; }
    }
    return true;
  }

  close() { this.sock.destroy(); }
}

// ---- SMTP sink (for [relay] smtp) -----------------------------------------

/**
 * Accepts every message and keeps it in memory: `messages` and `waitFor(to)`.
 * postern's relay sends recovery e-mail codes here.
 */
export function smtpSink(hostPort) {
  const [host, port] = hostPort.split(':');
  const messages = [];
  const waiters = new Set();
  const server = net.createServer((sock) => {
    sock.setEncoding('latin1');
    sock.on('error', () => {});
    let buf = '';
    let data = null;
    let envelope = { from: '', to: [] };
    sock.write('220 sink.test ESMTP test sink\r\n');
    sock.on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (data !== null) {
          if (line === '.') {
            messages.push({ ...envelope, data: data.join('\r\n') });
            for (const w of waiters) w();
            envelope = { from: '', to: [] };
            data = null;
            sock.write('250 2.0.0 queued\r\n');
          } else {
            data.push(line.startsWith('..') ? line.slice(1) : line);
          }
          continue;
        }
        const verb = line.split(/[ :]/)[0].toUpperCase();
        if (verb === 'EHLO') sock.write('250-sink.test\r\n250 8BITMIME\r\n');
        else if (verb === 'HELO') sock.write('250 sink.test\r\n');
        else if (verb === 'MAIL') { envelope.from = line.replace(/^[^<]*<([^>]*)>.*$/, '$1'); sock.write('250 2.1.0 ok\r\n'); }
        else if (verb === 'RCPT') { envelope.to.push(line.replace(/^[^<]*<([^>]*)>.*$/, '$1')); sock.write('250 2.1.5 ok\r\n'); }
        else if (verb === 'DATA') { data = []; sock.write('354 go ahead\r\n'); }
        else if (verb === 'QUIT') sock.end('221 2.0.0 bye\r\n');
        else if (verb === 'RSET' || verb === 'NOOP') sock.write('250 2.0.0 ok\r\n');
        else sock.write('502 5.5.1 not here\r\n');
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(port), host, () => resolve({
      messages,
      /** The first message to `to` (after `since` messages), within the bound. */
      waitFor(to, { since = 0, timeoutMs = 15_000 } = {}) {
        const find = () => messages.slice(since).find((m) => m.to.includes(to));
        return new Promise((res, rej) => {
          const hit = find();
          if (hit) return res(hit);
          const timer = setTimeout(() => { waiters.delete(w); rej(new Error(`no mail to ${to} within ${timeoutMs / 1000} s`)); }, timeoutMs);
          const w = () => { const m = find(); if (m) { clearTimeout(timer); waiters.delete(w); res(m); } };
          waiters.add(w);
        });
      },
      close: () => new Promise((r) => server.close(() => r())),
    }));
  });
}
