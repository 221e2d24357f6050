// Passkeys across two nodes (started by two_nodes.sh on one PostgreSQL): a
// proxy on the public port sends each request to node A and node B in turn, so
// nothing sticks to a node; headless Chromium with a DevTools virtual
// authenticator signs in, adds a passkey, signs out and signs in with it.
// Every check prints `ok - ...` or `not ok - ...`; the exit status is non-zero
// if any failed.
import http from 'node:http';
import { chromium } from 'playwright-core';
import { CheckFailed, check, expect, fail, failureCount } from './lib.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run tests/browser/two_nodes.sh)`);
  return value;
};
const PROXY = env('PROXY');
const NODES = { a: env('NODE_A'), b: env('NODE_B') };
const BASE = `http://localhost:${PROXY.split(':')[1]}`;
const ALICE = { address: 'alice@example.test', password: 'alice-primary' };

const watchdog = setTimeout(() => {
  fail('the two-node scenario finishes within 80 s', new Error('still running'));
  process.exit(1);
}, 80_000);

/**
 * Which node served each request, in order: `{ node, method, path, status }`;
 * `status` is null while the answer is on its way (Chromium asks for
 * /favicon.ico on its own, so a request may still be in flight at a check),
 * 502 when the proxy could not reach the node.
 */
const served = [];

/**
 * Forwards every request to the next node in turn (round robin per request,
 * whatever the browser's connection), headers and body untouched, so both
 * nodes see the same Host and the browser one origin.
 */
function roundRobinProxy(listen) {
  let next = 0;
  const server = http.createServer((req, res) => {
    const node = next++ % 2 === 0 ? 'a' : 'b';
    const [host, port] = NODES[node].split(':');
    const entry = { node, method: req.method, path: req.url, status: null };
    served.push(entry);
    const upstream = http.request({ host, port: Number(port), method: req.method, path: req.url, headers: req.headers }, (reply) => {
      entry.status = reply.statusCode;
      res.writeHead(reply.statusCode, reply.headers);
      reply.pipe(res);
    });
    upstream.on('error', (err) => {
      entry.status = 502;
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`node ${node}: ${err.message}`);
    });
    req.pipe(upstream);
  });
  const [host, port] = listen.split(':');
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(port), host, () => resolve(server));
  });
}

const path_ = (page) => new URL(page.url()).pathname;

/** The node that served the last request for `path` (a POST of the passkey script). */
const nodeOf = (path) => served.filter((r) => r.path === path).at(-1)?.node;

async function signIn(page) {
  await page.goto(`${BASE}/login`);
  await page.fill('#address', ALICE.address);
  await page.fill('#password', ALICE.password);
  await page.click('form[action="/login"] button');
}

let proxy;
let browser;
try {
  proxy = await roundRobinProxy(PROXY);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });

  await check('alice signs in with her password through the two nodes', async () => {
    await signIn(page);
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
  });
  await check('she adds a passkey; the ceremony begun on one node finishes on the other', async () => {
    await page.goto(`${BASE}/account/two-step`);
    await page.fill('#passkey_name', 'laptop');
    await page.click('#passkey-add button');
    await Promise.race([
      page.waitForSelector('.passkey-name:has-text("laptop")'),
      page.waitForSelector('#passkeys [data-passkey-error]:not([hidden])'),
    ]).catch(() => {});
    const error = page.locator('#passkeys [data-passkey-error]');
    expect(!(await error.isVisible()), `the page says: ${await error.textContent()}`);
    expect(await page.locator('.passkey-name').count() === 1, 'not listed');
    const begun = nodeOf('/account/passkeys/begin');
    const finished = nodeOf('/account/passkeys/finish');
    expect(begun && finished && begun !== finished, `begun on ${begun}, finished on ${finished}`);
    return `begun on node ${begun}, finished on node ${finished}`;
  });
  await check('she signs out', async () => {
    await page.click('button:has-text("Sign out")');
    expect(path_(page) === '/login', `landed on ${path_(page)}`);
  });
  await check('she signs in again with the passkey at the second step, across the nodes', async () => {
    await signIn(page);
    expect(path_(page) === '/login/code', `landed on ${path_(page)}`);
    await page.click('#passkey-login button');
    await Promise.race([
      page.waitForURL(`${BASE}/account`),
      page.waitForSelector('#passkey-login [data-passkey-error]:not([hidden])'),
    ]).catch(() => {});
    expect(path_(page) === '/account',
      `still on ${path_(page)}: ${await page.locator('#passkey-login [data-passkey-error]').textContent().catch(() => '')}`);
    const begun = nodeOf('/login/passkey/begin');
    const finished = nodeOf('/login/passkey/finish');
    expect(begun && finished && begun !== finished, `begun on ${begun}, finished on ${finished}`);
    return `begun on node ${begun}, finished on node ${finished}`;
  });
  await check('the passkey\'s last use is shown, whichever node answers', async () => {
    for (let i = 0; i < 2; i++) {
      await page.goto(`${BASE}/account/two-step`);
      expect(!/last used never/.test(await page.textContent('#passkeys')), 'last use not recorded');
    }
  });
  await check('both nodes served requests, alternately', async () => {
    const count = (node) => served.filter((r) => r.node === node).length;
    expect(count('a') > 0 && count('b') > 0, `node a ${count('a')}, node b ${count('b')}`);
    const failed = served.filter((r) => r.status !== null && r.status >= 500);
    expect(failed.length === 0, `${failed.length} failed: ${failed.map((r) => `${r.node} ${r.method} ${r.path} ${r.status}`).join(', ')}`);
    return `node a ${count('a')} requests, node b ${count('b')}`;
  });
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId });
} catch (err) {
  if (!(err instanceof CheckFailed)) fail('the two-node scenario', err);
} finally {
  await browser?.close();
  proxy?.close();
  proxy?.closeAllConnections?.();
  clearTimeout(watchdog);
}
const failed = failureCount();
console.log(failed === 0 ? '# all checks passed' : `# ${failed} check(s) failed`);
process.exit(failed === 0 ? 0 : 1);
