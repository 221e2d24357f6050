// Walks through postern's web UI in headless Chromium: user login, TOTP
// enrollment, backup codes, an app password, the second step, the domain
// administrator's card, and the system administrator's console with
// impersonation. Screenshots (desktop and phone) go to $SCREENSHOTS.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.POSTERN_BIN;
const SHOTS = process.env.SCREENSHOTS ?? 'target/screenshots';
const USERS = { 'alice@example.test': 'alice-primary', 'bob@example.test': 'bob-primary' };

// A tiny IMAP upstream: greeting, ID, AUTHENTICATE PLAIN (as the user, or as the
// master `proxy`/`masterpw`), LOGOUT.
function fakeImap() {
  const server = net.createServer((sock) => {
    sock.write('* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] fake ready\r\n');
    let buf = '';
    sock.on('error', () => {});
    sock.on('data', (data) => {
      buf += data.toString('latin1');
      let i;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const [tag, command = '', ...rest] = line.split(' ');
        switch (command.toUpperCase()) {
          case 'ID':
            sock.write(`* ID NIL\r\n${tag} OK ID completed\r\n`);
            break;
          case 'AUTHENTICATE': {
            const [authz, authc, pw] = Buffer.from(rest[1] ?? '', 'base64').toString().split('\0');
            const ok = (authz === '' && USERS[authc] === pw) ||
              (authc === 'proxy' && pw === 'masterpw' && authz in USERS);
            sock.write(ok ? `${tag} OK [CAPABILITY IMAP4rev1] Logged in\r\n`
              : `${tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n`);
            break;
          }
          case 'LOGOUT':
            sock.end(`* BYE bye\r\n${tag} OK Logout completed\r\n`);
            break;
          default:
            sock.write(`${tag} OK\r\n`);
        }
      }
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// RFC 6238 TOTP, SHA-1, 6 digits, 30 s.
function totp(base32, offsetSteps = 0) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of base32.replace(/[\s=]/g, '').toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30) + offsetSteps));
  const mac = crypto.createHmac('sha1', key).update(counter).digest();
  const o = mac[19] & 0xf;
  return String((mac.readUInt32BE(o) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

const imap = await fakeImap();
const webPort = await freePort();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postern-browser-'));
const config = path.join(dir, 'postern.toml');
fs.writeFileSync(config, `
[store]
url = "sqlite://${dir}/p.db"
[secrets]
key_file = "${dir}/k"
[tls]
cert = "${dir}/c.crt"
key = "${dir}/c.key"
[web]
listen = "127.0.0.1:${webPort}"
[imap]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
upstream = "127.0.0.1:${imap.address().port}"
[upstream_auth]
master_user = "proxy"
master_password = "masterpw"
`);
const admin = (...args) => {
  const r = spawnSync(BIN, ['--config', config, 'admin', ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, `admin ${args.join(' ')}: ${r.stderr}`);
};
admin('domain', 'add', 'example.test');
admin('domain', 'feature', 'example.test', 'on');
admin('domain', 'status', 'example.test', 'enabled');
admin('domain', 'admin', 'example.test', 'alice@example.test');

// Start serve and read the first-start administrator password from its log.
const serve = spawn(BIN, ['--config', config, 'serve'], { env: { ...process.env, RUST_LOG: 'info' } });
let log = '';
const adminPassword = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`serve did not start:\n${log}`)), 30_000);
  const onData = (d) => {
    log += d.toString();
    const m = log.match(/password=([0-9a-z-]{19})/);
    if (m && log.includes('web UI and API listening')) { clearTimeout(timer); resolve(m[1]); }
  };
  serve.stdout.on('data', onData);
  serve.stderr.on('data', onData);
});
const base = `http://127.0.0.1:${webPort}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const desktop = { viewport: { width: 1280, height: 900 } };
const phone = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
let failed = false;

try {
  const ctx = await browser.newContext(desktop);
  const page = await ctx.newPage();
  const errors = [];
  // Refused inline script/style or foreign resources would be CSP violations.
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) errors.push(m.text());
  });

  async function signIn(address, password) {
    await page.goto(`${base}/login`);
    await page.fill('#address', address);
    await page.fill('#password', password);
    await page.click('form[action="/login"] button');
  }

  await page.goto(`${base}/login`);
  await shot(page, '01-login-desktop');
  await signIn('alice@example.test', 'wrong');
  assert.match(await page.textContent('.error'), /Wrong address or password/);
  await signIn('alice@example.test', 'alice-primary');
  assert.equal(new URL(page.url()).pathname, '/account');
  await shot(page, '02-account');

  // Enroll an authenticator app.
  await page.goto(`${base}/account/two-step`);
  assert.ok(await page.locator('.qr svg').isVisible(), 'QR code shown');
  await shot(page, '03-enroll-totp');
  const secret = (await page.textContent('.secret')).replace(/\s/g, '');
  await page.fill('#code', totp(secret));
  await page.click('form[action="/account/two-step/confirm"] button');
  assert.match(await page.textContent('main'), /2-Step Authentication is on/);
  await page.click('text=Create backup codes');
  const codes = await page.locator('ul.codes li').allTextContents();
  assert.equal(codes.length, 10);
  await shot(page, '04-backup-codes');

  // An application password, shown once with instructions.
  await page.goto(`${base}/account/app-passwords`);
  await page.fill('#name', 'Thunderbird');
  await page.uncheck('input[name=pop3]');
  await page.click('form[action="/account/app-passwords"] button');
  assert.match(await page.textContent('.secret'), /^[0-9a-z]{4}(-[0-9a-z]{4}){3}$/);
  await shot(page, '05-app-password-created');
  await page.goto(`${base}/account/app-passwords`);
  assert.match(await page.textContent('table'), /Thunderbird/);
  await shot(page, '06-app-passwords');

  // Sign out; signing in now needs the second step (a backup code here).
  await page.click('button:has-text("Sign out")');
  await signIn('alice@example.test', 'alice-primary');
  assert.equal(new URL(page.url()).pathname, '/login/code');
  await page.goto(`${base}/account`);
  assert.equal(new URL(page.url()).pathname, '/login/code', 'half logged in reaches nothing else');
  await shot(page, '07-second-step');
  await page.fill('#code', codes[0]);
  await page.click('form[action="/login/code"] button');
  assert.equal(new URL(page.url()).pathname, '/account');

  // Domain administrator: force 2-Step.
  await page.goto(`${base}/domain`);
  assert.match(await page.textContent('.warning'), /disconnects third-party clients/);
  await shot(page, '08-domain-settings');
  await page.selectOption('#status', 'forced');
  await page.click('form[action="/domain/two-step"] button');
  assert.match(await page.textContent('main'), /Effective status: Forced/);

  // A user of the forced domain must enroll first (phone).
  const mobile = await browser.newContext(phone);
  const mpage = await mobile.newPage();
  await mpage.goto(`${base}/login`);
  await shot(mpage, '09-login-phone');
  await mpage.fill('#address', 'bob@example.test');
  await mpage.fill('#password', 'bob-primary');
  await mpage.click('form[action="/login"] button');
  assert.equal(new URL(mpage.url()).pathname, '/login/enroll');
  await shot(mpage, '10-forced-enroll-phone');
  const bobSecret = (await mpage.textContent('.secret')).replace(/\s/g, '');
  await mpage.fill('#code', totp(bobSecret));
  await mpage.click('form[action="/login/enroll"] button');
  assert.equal(new URL(mpage.url()).pathname, '/account/two-step');
  await shot(mpage, '11-enrolled-phone');

  // System administrator with the first-start password.
  const actx = await browser.newContext(desktop);
  const apage = await actx.newPage();
  await apage.goto(`${base}/admin/login`);
  await apage.fill('#name', 'admin');
  await apage.fill('#password', adminPassword);
  await apage.click('form[action="/admin/login"] button');
  assert.equal(new URL(apage.url()).pathname, '/admin');
  await apage.fill('#domain', 'new.test');
  await apage.click('form[action="/admin/domains"] button');
  await shot(apage, '12-admin-domains');
  await apage.goto(`${base}/admin/domains/example.test`);
  await shot(apage, '13-admin-domain');
  await apage.click('button:has-text("Impersonate")');
  assert.equal(new URL(apage.url()).pathname, '/domain');
  assert.match(await apage.textContent('.banner'), /acting as/);
  await shot(apage, '14-impersonating');
  await apage.click('.banner button');
  await apage.goto(`${base}/admin/audit?user=alice%40example.test`);
  assert.match(await apage.textContent('table'), /impersonate/);
  await shot(apage, '15-audit');

  assert.deepEqual(errors, [], 'no CSP violations');
  console.log(`browser tests passed; screenshots in ${SHOTS}`);
} catch (err) {
  failed = true;
  console.error(err);
  console.error(log.split('\n').slice(-30).join('\n'));
} finally {
  await browser.close();
  serve.kill('SIGTERM');
  imap.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
