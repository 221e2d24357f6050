// Browser scenarios: headless Chromium walks through postern's web UI while
// postern runs in front of a real Dovecot (started by run.sh, which also sets up
// the domains). Every check prints `ok - ...` or `not ok - ...`; the exit status
// is non-zero if any failed. Screenshots of each page go to $SCREENSHOTS; the
// README tour's pictures also go to $TOUR_DIR when it is set.
//
// The scenarios run in order and share `ctx` (a later one may build on an earlier
// one: alice enrolls before she signs in with a second step). A new scenario is a
// `scenario('name', async (ctx) => { ... })` call appended below.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CheckFailed, Imap, check, expect, fail, failureCount, nextTotpStep, smtpSink, totp, totpStep } from './lib.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run tests/browser/run.sh)`);
  return value;
};
const BASE = env('POSTERN_WEB');
const IMAP = env('POSTERN_IMAP');
const SHOTS = env('SCREENSHOTS');
const TOUR = process.env.TOUR_DIR || '';
const SYSADMIN = { name: env('SYSADMIN_NAME'), password: env('SYSADMIN_PASSWORD') };
// A domain with a 60-character name and no hyphen (run.sh adds it).
const LONG_DOMAIN = env('LONG_DOMAIN');
// Users of the private Dovecot (tests/interop/dovecot.sh).
const ALICE = { address: 'alice@example.test', password: 'alice-primary' };
const BOB = { address: 'bob@example.test', password: 'bob-primary' };
const CAROL = { address: 'carol@example.test', password: 'carol-primary' };
const DAVE = { address: 'dave@forced.test', password: 'dave-primary' };
const ERIN = { address: 'erin@forced.test', password: 'erin-primary' };
const JUDY = { address: 'judy@example.test', password: 'judy-primary' };
const KIM = { address: 'kim@forced.test', password: 'kim-primary' };
const FRANK = { address: 'frank@example.test', password: 'frank-primary' };

const DESKTOP = { viewport: { width: 1100, height: 800 } };
const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

// The whole walk is bounded (one wait for the next TOTP step is the longest part).
const watchdog = setTimeout(() => {
  fail('browser scenarios finish within 290 s', new Error('still running'));
  process.exit(1);
}, 290_000);

const scenarios = [];
const scenario = (name, run) => scenarios.push({ name, run });

const path_ = (page) => new URL(page.url()).pathname;

/**
 * Saves a full-page screenshot (`full: false`: the first screen); with `tour`,
 * also the first screen into TOUR_DIR.
 */
async function shot(page, name, { tour = false, full = true } = {}) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: full });
  if (tour && TOUR) await page.screenshot({ path: path.join(TOUR, `${name}.png`) });
}

/** Pages must fit a phone's width: a table may scroll inside its card, the page not. */
async function fitsWidth(page) {
  const { scroll, width } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    width: document.documentElement.clientWidth,
  }));
  expect(scroll <= width, `the page is ${scroll} px wide on a ${width} px screen`);
}

/**
 * On a phone every `selector` element lies within the screen's width, and no
 * table scrolls sideways inside its card (wide tables stack into labelled rows).
 */
async function inView(page, selector) {
  const width = page.viewportSize().width;
  const found = await page.locator(selector).evaluateAll((els) => els.map((e) => {
    const r = e.getBoundingClientRect();
    return { left: r.left, right: r.right, text: e.textContent.replace(/\s+/g, ' ').trim() };
  }));
  expect(found.length > 0, `nothing matches ${selector}`);
  const out = found.filter((b) => b.left < 0 || b.right > width);
  expect(out.length === 0,
    `${out.length} of ${found.length} (first "${out[0]?.text}") reach ${Math.round(out[0]?.right)} px on a ${width} px screen`);
  const scrolling = await page.locator('.table').evaluateAll((els) => els
    .filter((e) => e.scrollWidth > e.clientWidth)
    .map((e) => `${e.scrollWidth} px in ${e.clientWidth} px`));
  expect(scrolling.length === 0, `a table scrolls sideways: ${scrolling.join(', ')}`);
  return `${found.length} in view`;
}

/**
 * Every `selector` element ends inside the card that holds it (a long word in a
 * table cell must wrap, not push the table past the card's border).
 */
async function insideCards(page, selector) {
  const found = await page.locator(selector).evaluateAll((els) => els.map((e) => {
    const card = e.closest('.card');
    const r = e.getBoundingClientRect();
    const c = card?.getBoundingClientRect();
    return { right: r.right, card: c?.right, cardWidth: card?.clientWidth, cardScroll: card?.scrollWidth, text: e.textContent.trim() };
  }));
  expect(found.length > 0, `nothing matches ${selector}`);
  const out = found.filter((b) => b.card === undefined || b.right > b.card || b.cardScroll > b.cardWidth);
  expect(out.length === 0,
    `"${out[0]?.text}" reaches ${Math.round(out[0]?.right)} px, its card ends at ${Math.round(out[0]?.card)} px (content ${out[0]?.cardScroll} px in ${out[0]?.cardWidth} px)`);
  return `${found.length} inside their cards`;
}

/** The code in a recovery e-mail (`1234 5678`), from the message as the sink got it. */
function mailedCode(message) {
  const text = message.data.replace(/=\r\n/g, '');
  const code = text.match(/Your code is: (\d{4} \d{4})/)?.[1];
  expect(code, `no code in the mail: ${text.slice(0, 200)}`);
  return code;
}

const subjectOf = (message) => message.data.match(/^Subject: (.*)$/m)?.[1] ?? '';

async function newPage(ctx, options) {
  const context = await ctx.browser.newContext(options);
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  // The pages carry no inline script and a strict Content-Security-Policy; anything the
  // browser refuses would show up here.
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content.Security.Policy|Refused to/i.test(m.text())) ctx.cspErrors.push(m.text());
  });
  return page;
}

async function signIn(page, { address, password }) {
  await page.goto(`${BASE}/login`);
  await page.fill('#address', address);
  await page.fill('#password', password);
  await page.click('form[action="/login"] button');
}

async function imapLogin({ address, password }) {
  const imap = await Imap.connect(IMAP);
  const reply = await imap.login(address, password);
  return { imap, reply };
}

// ---- a user enrolls TOTP ---------------------------------------------------

scenario('user enrolls an authenticator app', async (ctx) => {
  const page = await newPage(ctx, DESKTOP);
  ctx.alice = page;
  await page.goto(`${BASE}/login`);
  await shot(page, '01-login');

  await check('a wrong primary password is refused on the web', async () => {
    await signIn(page, { ...ALICE, password: 'not-her-password' });
    expect(/Wrong address or password/.test(await page.textContent('.error')), 'no error shown');
  });
  await check('alice signs in with her primary password (checked by Dovecot)', async () => {
    await signIn(page, ALICE);
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
    expect(/available: you may turn it on/.test(await page.textContent('main')), 'status not shown');
  });
  await shot(page, '02-account');

  await page.goto(`${BASE}/account/two-step`);
  await check('the enrollment page shows a QR code and the key', async () => {
    expect(await page.locator('.qr svg').isVisible(), 'no QR code');
    ctx.aliceSecret = (await page.textContent('.secret')).replace(/\s/g, '');
    expect(/^[A-Z2-7]{32}$/.test(ctx.aliceSecret), `key ${ctx.aliceSecret.length} characters`);
  });
  await shot(page, '03-enroll-totp', { tour: true });

  await check('a wrong code does not turn 2-Step on', async () => {
    const wrong = String((Number(totp(ctx.aliceSecret)) + 500_000) % 1_000_000).padStart(6, '0');
    await page.fill('#code', wrong);
    await page.click('form[action="/account/two-step/confirm"] button');
    expect(/not right/.test(await page.textContent('.error')), 'no error shown');
  });
  await check('the code computed from the key turns 2-Step Authentication on', async () => {
    ctx.aliceStep = totpStep();
    ctx.aliceUsedCode = totp(ctx.aliceSecret, ctx.aliceStep);
    await page.fill('#code', ctx.aliceUsedCode);
    await page.click('form[action="/account/two-step/confirm"] button');
    expect(/2-Step Authentication is on/.test(await page.textContent('main')), 'not on');
  });
  await shot(page, '04-two-step-on');

  await check('once enrolled, alice\'s primary password is refused over IMAP', async () => {
    const { imap, reply } = await imapLogin(ALICE);
    imap.close();
    expect(reply.status === 'NO' && /AUTHENTICATIONFAILED/.test(reply.text), `${reply.status} ${reply.text}`);
    return reply.text;
  });
});

// ---- signing in again needs a fresh code -----------------------------------

scenario('user signs out and in with a fresh code', async (ctx) => {
  const page = ctx.alice;
  await check('signing out leads back to the login page', async () => {
    await page.click('button:has-text("Sign out")');
    expect(path_(page) === '/login', `landed on ${path_(page)}`);
  });
  await check('the primary password now leads to the second step', async () => {
    await signIn(page, ALICE);
    expect(path_(page) === '/login/code', `landed on ${path_(page)}`);
  });
  await shot(page, '05-second-step');
  await check('half signed in, the account pages stay out of reach', async () => {
    await page.goto(`${BASE}/account/app-passwords`);
    expect(path_(page) === '/login/code', `reached ${path_(page)}`);
  });
  await check('the code already used for enrollment is refused', async () => {
    await page.fill('#code', ctx.aliceUsedCode);
    await page.click('form[action="/login/code"] button');
    expect(/already used/.test(await page.textContent('.error')), await page.textContent('.error'));
  });
  await check('a fresh code from the next 30-second step signs alice in', async () => {
    const step = await nextTotpStep(ctx.aliceStep);
    await page.fill('#code', totp(ctx.aliceSecret, step));
    await page.click('form[action="/login/code"] button');
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
  });
});

// ---- a passkey as the second step (DevTools virtual authenticator) ---------

scenario('user adds a passkey, signs in with it at the second step, removes it', async (ctx) => {
  const page = ctx.alice;
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  await check('alice adds a passkey named "laptop" on the 2-Step page', async () => {
    await page.goto(`${BASE}/account/two-step`);
    await page.fill('#passkey_name', 'laptop');
    const logged = [];
    page.on('console', (m) => logged.push(m.text()));
    page.on('pageerror', (e) => logged.push(`error: ${e.message}`));
    page.on('response', (r) => { if (r.url().includes('passkey')) logged.push(`${r.status()} ${r.url()}`); });
    await page.click('#passkey-add button');
    await Promise.race([
      page.waitForSelector('.passkey-name:has-text("laptop")'),
      page.waitForSelector('#passkeys [data-passkey-error]:not([hidden])'),
    ]).catch(() => {});
    const error = page.locator('#passkeys [data-passkey-error]');
    expect(!(await error.isVisible()), `the page says: ${await error.textContent()}`);
    expect(await page.locator('.passkey-name').count() === 1, `not listed (${path_(page)}; console: ${logged.join(' | ')})`);
    const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    expect(credentials.length === 1, `${credentials.length} credentials on the authenticator`);
    expect(/last used never/.test(await page.textContent('#passkeys')), 'no last use shown');
  });
  await shot(page, '05b-passkeys');
  await check('after signing out, the second step offers the passkey and it signs alice in', async () => {
    await page.click('button:has-text("Sign out")');
    await signIn(page, ALICE);
    expect(path_(page) === '/login/code', `landed on ${path_(page)}`);
    await page.click('#passkey-login button');
    await Promise.race([
      page.waitForURL(`${BASE}/account`),
      page.waitForSelector('#passkey-login [data-passkey-error]:not([hidden])'),
    ]).catch(() => {});
    expect(path_(page) === '/account',
      `still on ${path_(page)}: ${await page.locator('#passkey-login [data-passkey-error]').textContent().catch(() => '')}`);
  });
  await check('the passkey shows its last use and can be removed', async () => {
    await page.goto(`${BASE}/account/two-step`);
    expect(!/last used never/.test(await page.textContent('#passkeys')), 'last use not recorded');
    await page.click('#passkeys form[action$="/remove"] button');
    expect(path_(page) === '/account/two-step', `landed on ${path_(page)}`);
    expect(await page.locator('.passkey-name').count() === 0, 'still listed');
  });
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId });
  await cdp.detach();
});

// ---- an application password works over IMAP -------------------------------

scenario('user creates an app password and uses it over IMAP', async (ctx) => {
  const page = ctx.alice;
  await page.goto(`${BASE}/account/app-passwords`);
  await check('a new app password is shown once, typeable', async () => {
    await page.fill('#name', 'Thunderbird');
    await page.click('form[action="/account/app-passwords"] button');
    ctx.aliceAppPassword = (await page.textContent('.secret')).trim();
    expect(/^[0-9a-z]{4}(-[0-9a-z]{4}){3,}$/.test(ctx.aliceAppPassword), `shown: ${ctx.aliceAppPassword}`);
  });
  await shot(page, '06-app-password-created', { tour: true });
  await check('the list names the device, without the password', async () => {
    await page.goto(`${BASE}/account/app-passwords`);
    const table = await page.textContent('table');
    expect(/Thunderbird/.test(table), 'Thunderbird not listed');
    expect(!table.includes(ctx.aliceAppPassword), 'the password is shown again');
  });

  await check('IMAP LOGIN through postern with the app password succeeds', async () => {
    const { imap, reply } = await imapLogin({ address: ALICE.address, password: ctx.aliceAppPassword });
    ctx.aliceImap = imap;
    expect(reply.status === 'OK', `${reply.status} ${reply.text}`);
  });
  await check('SELECT INBOX shows alice\'s message from Dovecot', async () => {
    const reply = await ctx.aliceImap.command('SELECT INBOX');
    expect(reply.status === 'OK', `${reply.status} ${reply.text}`);
    expect(reply.untagged.includes('* 1 EXISTS'), `untagged: ${reply.untagged.join(' | ')}`);
  });
  await check('the same app password typed in capitals with spaces also works', async () => {
    const typed = ctx.aliceAppPassword.toUpperCase().replace(/-/g, ' ');
    const { imap, reply } = await imapLogin({ address: ALICE.address, password: typed });
    imap.close();
    expect(reply.status === 'OK', `${reply.status} ${reply.text}`);
  });
  await check('the list shows the last use: IMAP from 127.0.0.1', async () => {
    await page.goto(`${BASE}/account/app-passwords`);
    const row = (await page.textContent('tr:has-text("Thunderbird")')).replace(/\s+/g, ' ');
    expect(/127\.0\.0\.1/.test(row) && /IMAP/.test(row), row.trim());
  });
  await shot(page, '07-app-passwords', { tour: true });
});

// ---- recovery e-mail as the second factor ----------------------------------
// Runs while example.test is still Enabled (the next scenario forces it).

scenario('user enrolls with a recovery e-mail address and signs in with a mailed code', async (ctx) => {
  const page = await newPage(ctx, DESKTOP);
  const recovery = 'carol.home@elsewhere.test';
  const masked = 'c***@elsewhere.test';
  await check('carol (example.test, not enrolled) signs in with her primary password', async () => {
    await signIn(page, CAROL);
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
  });
  await check('adding a recovery address on the 2-Step page mails it a confirmation code', async () => {
    await page.goto(`${BASE}/account/two-step`);
    const since = ctx.mail.messages.length;
    // By its label, as a user finds the field.
    await page.getByLabel('Recovery e-mail address').fill(recovery);
    await page.click('form[action="/account/two-step/email"] button');
    const notice = await page.textContent('#recovery .ok');
    expect(notice.includes(`We sent a code to ${masked}`), notice);
    const said = (await page.textContent('#recovery')).match(/We sent a code/g)?.length;
    expect(said === 1, `"We sent a code" appears ${said} times`);
    const mail = await ctx.mail.waitFor(recovery, { since });
    expect(/Confirm your recovery e-mail address/.test(subjectOf(mail)), `subject: ${subjectOf(mail)}`);
    ctx.carolConfirmCode = mailedCode(mail);
  });
  await shot(page, '19-recovery-code-sent');
  await check('the code from the mail confirms the address and turns 2-Step on', async () => {
    await page.fill('#email_code', ctx.carolConfirmCode);
    await page.click('form[action="/account/two-step/email/confirm"] button');
    expect(path_(page) === '/account/two-step', `landed on ${path_(page)}`);
    const main = (await page.textContent('main')).replace(/\s+/g, ' ');
    expect(/2-Step Authentication is on/.test(main), 'not on');
    expect(main.includes(`Recovery e-mail ${masked}`), 'the recovery address is not listed');
  });
  await shot(page, '20-recovery-enrolled');
  await check('carol signs out', async () => {
    await page.click('form[action="/logout"] button');
    expect(path_(page) === '/login', `landed on ${path_(page)}`);
  });
  await check('her password now leads to the second step, which offers her recovery e-mail', async () => {
    await signIn(page, CAROL);
    expect(path_(page) === '/login/code', `landed on ${path_(page)}`);
    const offer = await page.textContent('form[action="/login/email"] button');
    expect(offer.includes(`Send a code to my recovery e-mail (${masked})`), offer);
  });
  const since = ctx.mail.messages.length;
  await check('"Send a code to my recovery e-mail" mails a sign-in code', async () => {
    await page.click('form[action="/login/email"] button');
    const status = await page.textContent('.ok');
    expect(status.includes(`We sent a code to ${masked}`), status);
    const mail = await ctx.mail.waitFor(recovery, { since });
    expect(/Your sign-in code/.test(subjectOf(mail)), `subject: ${subjectOf(mail)}`);
    ctx.carolLoginCode = mailedCode(mail);
  });
  await shot(page, '21-recovery-second-step', { tour: true });
  await check('asking again within the minute is refused, and no second mail goes out', async () => {
    await page.click('form[action="/login/email"] button');
    const error = await page.textContent('.error');
    expect(/less than a minute ago/.test(error), error);
    const mails = ctx.mail.messages.slice(since).filter((m) => m.to.includes(recovery));
    expect(mails.length === 1, `${mails.length} mails since the first send`);
  });
  await shot(page, '22-recovery-rate-limited');
  await check('the mailed code signs carol in', async () => {
    await page.fill('#code', ctx.carolLoginCode);
    await page.click('form[action="/login/code"] button');
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
  });
  await check('the same mailed code does not sign in twice', async () => {
    await page.click('form[action="/logout"] button');
    await signIn(page, CAROL);
    await page.fill('#code', ctx.carolLoginCode);
    await page.click('form[action="/login/code"] button');
    expect(path_(page) === '/login/code', `landed on ${path_(page)}`);
    const error = await page.textContent('.error');
    expect(/expired or was already used/.test(error), error);
  });
  await page.context().close();
});

// ---- a domain administrator forces 2-Step ----------------------------------

scenario('domain administrator switches to Forced; a primary-password session is dropped', async (ctx) => {
  const page = ctx.alice;
  await check('bob (not enrolled) logs in over IMAP with his primary password and idles', async () => {
    const { imap, reply } = await imapLogin(BOB);
    ctx.bobImap = imap;
    expect(reply.status === 'OK', `${reply.status} ${reply.text}`);
    const select = await imap.command('SELECT INBOX');
    expect(select.status === 'OK', `SELECT ${select.status} ${select.text}`);
    await imap.idle();
  });
  await check('the domain card warns that forcing disconnects password clients, counting bob\'s session', async () => {
    await page.goto(`${BASE}/domain`);
    const warning = await page.textContent('.warning');
    expect(/disconnects third-party clients/.test(warning), 'no warning');
    expect(/Right now 1 mail session/.test(warning), warning.replace(/\s+/g, ' ').trim());
  });
  await shot(page, '08-domain-settings', { tour: true });
  await check('on a desktop the users table keeps its header row, without per-cell labels', async () => {
    const { header, label } = await page.locator('td[data-label="2-Step"]').first().evaluate((td) => ({
      header: td.closest('table').querySelector('thead').getBoundingClientRect().height,
      label: getComputedStyle(td, '::before').content,
    }));
    expect(header > 10 && label === 'none', `header ${header} px high, cell label ${label}`);
  });
  await check('choosing Forced asks for a confirmation first, naming the sessions it drops', async () => {
    await page.selectOption('#status', 'forced');
    await page.click('form[action="/domain/two-step"] button');
    const main = (await page.textContent('main')).replace(/\s+/g, ' ');
    expect(/Force 2-Step Authentication for example\.test\?/.test(main), main.trim());
    expect(/1 mail session/.test(main), main.trim());
  });
  await check('the domain administrator confirms: example.test is Forced', async () => {
    await page.click('form[action="/domain/two-step"] button');
    expect(/Effective status: Forced/.test(await page.textContent('main')), 'status not Forced');
  });
  await shot(page, '09-domain-forced');
  await check('bob\'s primary-password IMAP session gets * BYE and is closed', async () => {
    const bye = await ctx.bobImap.waitFor(/^\* BYE/);
    expect(bye !== null, 'closed without * BYE');
    expect(await ctx.bobImap.waitClosed(), 'still open after * BYE');
    return bye;
  });
  await check('alice\'s app-password session stays open', async () => {
    const reply = await ctx.aliceImap.command('NOOP');
    expect(reply.status === 'OK', `${reply.status} ${reply.text}`);
  });
  await check('bob\'s primary password is now refused over IMAP', async () => {
    const { imap, reply } = await imapLogin(BOB);
    imap.close();
    expect(reply.status === 'NO', `${reply.status} ${reply.text}`);
  });
  ctx.aliceImap.close();
});

// ---- the system administrator ----------------------------------------------

scenario('system administrator turns the feature on for a domain and impersonates its administrator', async (ctx) => {
  const page = await newPage(ctx, DESKTOP);
  ctx.sysadmin = page;
  await check('dave logs in over IMAP with his primary password (forced.test: feature off)', async () => {
    const { imap, reply } = await imapLogin(DAVE);
    ctx.daveImap = imap;
    expect(reply.status === 'OK', `${reply.status} ${reply.text}`);
    await imap.idle();
  });
  await check('the system administrator signs in', async () => {
    await page.goto(`${BASE}/admin/login`);
    await page.fill('#name', SYSADMIN.name);
    await page.fill('#password', SYSADMIN.password);
    await page.click('form[action="/admin/login"] button');
    expect(path_(page) === '/admin', `landed on ${path_(page)}`);
  });
  await check('the domains list shows forced.test with the feature off', async () => {
    const row = await page.textContent('tr:has(a[href="/admin/domains/forced.test"])');
    expect(/Off/.test(row) && /forced/.test(row), row.replace(/\s+/g, ' ').trim());
  });
  await shot(page, '10-admin-domains');
  await check('turning the feature on for forced.test makes it On', async () => {
    await page.click('a[href="/admin/domains/forced.test"] >> nth=0');
    await page.click('form[action="/admin/domains/forced.test/feature"] button');
    expect(/2-Step Authentication: On/.test(await page.textContent('main')), 'still off');
  });
  await shot(page, '11-admin-domain');
  await check('dave\'s primary-password session is dropped (forced.test is now Forced)', async () => {
    const bye = await ctx.daveImap.waitFor(/^\* BYE/);
    expect(bye !== null, 'closed without * BYE');
    expect(await ctx.daveImap.waitClosed(), 'still open after * BYE');
    return bye;
  });
  await check('impersonating dave shows his domain card under a banner', async () => {
    await page.click('form[action="/admin/impersonate"]:has(input[value="dave@forced.test"]) button');
    expect(path_(page) === '/domain', `landed on ${path_(page)}`);
    const banner = await page.textContent('.banner');
    expect(/You are admin, acting as dave@forced.test/.test(banner.replace(/\s+/g, ' ')), banner);
    expect(/Effective status: Forced/.test(await page.textContent('main')), 'status not Forced');
  });
  await shot(page, '12-impersonating', { tour: true });
  await check('stopping impersonation returns to the console', async () => {
    await page.click('.banner button');
    expect(path_(page) === '/admin', `landed on ${path_(page)}`);
  });
  await check('the audit log records the impersonation and the feature switch', async () => {
    await page.goto(`${BASE}/admin/audit`);
    const table = await page.textContent('table');
    expect(/impersonate/.test(table), 'no impersonation');
    expect(/forced\.test/.test(table), 'no forced.test entry');
  });
  await shot(page, '13-audit');
});

// ---- a phone-sized screen --------------------------------------------------

scenario('a user of a Forced domain enrolls on a phone-sized screen', async (ctx) => {
  const page = await newPage(ctx, PHONE);
  await page.goto(`${BASE}/login`);
  await shot(page, '14-phone-login');
  await check('the login page fits a phone screen', () => fitsWidth(page));
  await check('erin (forced.test) must set up 2-Step before anything else', async () => {
    await signIn(page, ERIN);
    expect(path_(page) === '/login/enroll', `landed on ${path_(page)}`);
    await page.goto(`${BASE}/account`);
    expect(path_(page) === '/login/enroll', `reached ${path_(page)}`);
  });
  await shot(page, '15-phone-forced-enroll');
  await check('the enrollment page fits a phone screen', () => fitsWidth(page));
  await check('the code from the key shown on the phone completes enrollment', async () => {
    const secret = (await page.textContent('.secret')).replace(/\s/g, '');
    await page.fill('#code', totp(secret));
    await page.click('form[action="/login/enroll"] button');
    expect(path_(page) === '/account/two-step', `landed on ${path_(page)}`);
    expect(/2-Step Authentication is on/.test(await page.textContent('main')), 'not on');
  });
  await page.goto(`${BASE}/account/app-passwords`);
  await page.fill('#name', 'Phone');
  await page.click('form[action="/account/app-passwords"] button');
  await shot(page, '16-phone-app-password');
  await check('the new app password page fits a phone screen', () => fitsWidth(page));
  await page.goto(`${BASE}/account/app-passwords`);
  await shot(page, '17-phone-app-passwords');
  await check('the app password list fits a phone screen', () => fitsWidth(page));
  await check('each app password\'s Revoke button is on screen, no sideways scrolling', () => inView(page, 'form[action$="/revoke"] button'));

  // The domain card (a wide users table) as alice, with her desktop session.
  const phoneAlice = await ctx.browser.newContext({ ...PHONE, storageState: await ctx.alice.context().storageState() });
  const domainPage = await phoneAlice.newPage();
  domainPage.setDefaultTimeout(15_000);
  await domainPage.goto(`${BASE}/domain`);
  await shot(domainPage, '18-phone-domain');
  await check('the domain card fits a phone screen', () => fitsWidth(domainPage));
  await check('each user\'s Reset 2-Step button is on screen, no sideways scrolling', () => inView(domainPage, 'form[action="/domain/users/reset"] button'));
  await check('the users table names each value on a phone (stacked rows)', async () => {
    const label = await domainPage.locator('td[data-label="2-Step"]').first().evaluate((td) => getComputedStyle(td, '::before').content);
    expect(label === '"2-Step"', `label shown: ${label}`);
  });

  // The audit log (a six-column table) as the system administrator.
  const phoneAdmin = await ctx.browser.newContext({ ...PHONE, storageState: await ctx.sysadmin.context().storageState() });
  const auditPage = await phoneAdmin.newPage();
  auditPage.setDefaultTimeout(15_000);
  await auditPage.goto(`${BASE}/admin/audit`);
  await shot(auditPage, '23-phone-audit', { full: false });
  await check('the audit log fits a phone screen', () => fitsWidth(auditPage));
  await check('every audit entry is on screen, no sideways scrolling', () => inView(auditPage, 'table.audit td'));

  // The domains table with a 60-character domain name.
  const consolePage = await phoneAdmin.newPage();
  consolePage.setDefaultTimeout(15_000);
  await consolePage.goto(`${BASE}/admin`);
  await shot(consolePage, '24-phone-long-domain');
  await check('the domains list fits a phone screen with a 60-character domain name', () => fitsWidth(consolePage));
  await check('the 60-character domain name wraps inside its card', () => insideCards(consolePage, `td:has(a[href="/admin/domains/${LONG_DOMAIN}"])`));
  await check('every cell of the domains table is inside its card, no sideways scrolling', async () => {
    await insideCards(consolePage, '.card.table td');
    return inView(consolePage, '.card.table td');
  });
  await consolePage.goto(`${BASE}/admin/domains/${LONG_DOMAIN}`);
  await shot(consolePage, '25-phone-long-domain-page');
  await check('the page of a 60-character domain fits a phone screen', () => fitsWidth(consolePage));
});

// Scenarios appended here run last (example.test is Forced by then); ctx.mail
// holds what postern sent through [relay].

// ---- a passkey as the first factor; app passwords limited to networks -----

/** A DevTools virtual authenticator (platform, user verified) on `page`. */
async function virtualAuthenticator(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  return { cdp, authenticatorId };
}

/** On the forced-enrollment page: a passkey named `name` as the first factor. */
async function enrollWithPasskey(page, name) {
  expect(path_(page) === '/login/enroll', `on ${path_(page)}, not the enrollment page`);
  await page.fill('#passkey_name', name);
  await page.click('#passkey-add button');
  await Promise.race([
    page.waitForURL(`${BASE}/account/two-step`),
    page.waitForSelector('#passkeys [data-passkey-error]:not([hidden])'),
  ]).catch(() => {});
  expect(path_(page) === '/account/two-step',
    `still on ${path_(page)}: ${await page.locator('#passkeys [data-passkey-error]').textContent().catch(() => '')}`);
  expect(/2-Step Authentication is on/.test(await page.textContent('main')), 'not on');
  expect(await page.locator(`.passkey-name:has-text("${name}")`).count() === 1, `${name} not listed`);
}

/** Creates an app password limited to `networks` on /account/app-passwords; returns it. */
async function appPasswordFrom(page, name, networks) {
  await page.goto(`${BASE}/account/app-passwords`);
  await page.fill('#name', name);
  await page.fill('#networks', networks);
  await page.click('form[action="/account/app-passwords"] button');
  const shown = await page.textContent('main');
  expect(shown.includes(`It works only from ${networks}`), `the page does not say where it works: ${shown.slice(0, 200)}`);
  return (await page.textContent('.secret')).trim();
}

scenario('a user of a Forced domain enrolls with a passkey; app passwords limited to networks', async (ctx) => {
  const page = await newPage(ctx, DESKTOP);
  const { cdp, authenticatorId } = await virtualAuthenticator(page);
  await check('judy (example.test, Forced) is offered a passkey on the enrollment page', async () => {
    await signIn(page, JUDY);
    expect(path_(page) === '/login/enroll', `landed on ${path_(page)}`);
    expect(await page.locator('#passkeys #passkey-add button').isVisible(), 'no "Add a passkey"');
  });
  await shot(page, '26-forced-enroll-passkey');
  await check('a passkey alone completes the enrollment', () => enrollWithPasskey(page, 'laptop'));
  await check('judy\'s primary password is refused over IMAP', async () => {
    const { imap, reply } = await imapLogin(JUDY);
    imap.close();
    expect(reply.status === 'NO', `${reply.status} ${reply.text}`);
  });
  let office;
  let branch;
  await check('an app password limited to 127.0.0.1/32 and one to 192.0.2.0/24 are created', async () => {
    office = await appPasswordFrom(page, 'Office desktop', '127.0.0.1/32');
    branch = await appPasswordFrom(page, 'Branch office', '192.0.2.0/24');
  });
  await check('the list shows each app password\'s networks', async () => {
    await page.goto(`${BASE}/account/app-passwords`);
    const row = async (name) => (await page.textContent(`tr:has-text("${name}") td[data-label="Networks"]`)).trim();
    expect(await row('Office desktop') === '127.0.0.1/32', `Office desktop: ${await row('Office desktop')}`);
    expect(await row('Branch office') === '192.0.2.0/24', `Branch office: ${await row('Branch office')}`);
  });
  await shot(page, '27-app-passwords-networks');
  await check('IMAP from 127.0.0.1 works with the one limited to 127.0.0.1/32', async () => {
    const { imap, reply } = await imapLogin({ address: JUDY.address, password: office });
    imap.close();
    expect(reply.status === 'OK', `${reply.status} ${reply.text}`);
  });
  await check('IMAP from 127.0.0.1 is refused with the one limited to 192.0.2.0/24', async () => {
    const { imap, reply } = await imapLogin({ address: JUDY.address, password: branch });
    imap.close();
    expect(reply.status === 'NO' && /AUTHENTICATIONFAILED/.test(reply.text), `${reply.status} ${reply.text}`);
  });
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId });
  await cdp.detach();
  await page.context().close();
});

// ---- "Confirm it is you" with a passkey -----------------------------------

scenario('a user confirms it is them with a passkey before creating an app password', async (ctx) => {
  const page = await newPage(ctx, DESKTOP);
  const { cdp, authenticatorId } = await virtualAuthenticator(page);
  await check('kim (forced.test) enrolls with a passkey', async () => {
    await signIn(page, KIM);
    await enrollWithPasskey(page, 'phone');
  });
  await check('ten minutes later, creating an app password asks "Confirm it is you" with a passkey', async () => {
    // The session's proof ages in the store instead of the test waiting 10 minutes.
    execFileSync('sqlite3', [env('POSTERN_DB'),
      `UPDATE web_sessions SET proved_at = proved_at - 660 WHERE subject = '${KIM.address}'`]);
    await page.goto(`${BASE}/account/app-passwords`);
    await page.fill('#name', 'Tablet');
    await page.click('form[action="/account/app-passwords"] button');
    expect(/Confirm it is you/.test(await page.textContent('h1')), `shown: ${await page.textContent('h1')}`);
    expect(await page.locator('#passkey-reauth button').isVisible(), 'no "Use a passkey"');
  });
  await shot(page, '28-reauth-passkey');
  await check('the passkey confirms it and leads back to the app passwords', async () => {
    await page.click('#passkey-reauth button');
    await Promise.race([
      page.waitForURL(`${BASE}/account/app-passwords`),
      page.waitForSelector('#passkey-reauth [data-passkey-error]:not([hidden])'),
    ]).catch(() => {});
    expect(path_(page) === '/account/app-passwords',
      `still on ${path_(page)}: ${await page.locator('#passkey-reauth [data-passkey-error]').textContent().catch(() => '')}`);
  });
  await check('the app password is then created without asking again', async () => {
    await page.fill('#name', 'Tablet');
    await page.click('form[action="/account/app-passwords"] button');
    expect(/^[0-9a-z]{4}(-[0-9a-z]{4}){3,}$/.test((await page.textContent('.secret')).trim()), 'no password shown');
  });
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId });
  await cdp.detach();
  await page.context().close();
});

// ---- a Forced roll-out scheduled for a date --------------------------------

// rollout.test: feature on, status Enabled, henry its administrator (run.sh).
const HENRY = { address: 'henry@rollout.test', password: 'henry-primary' };
const IVY = { address: 'ivy@rollout.test', password: 'ivy-primary' };

scenario('domain administrator schedules Forced for a date; users see the date and are mailed the steps', async (ctx) => {
  const page = await newPage(ctx, DESKTOP);
  const day = new Date(Date.now() + 14 * 86_400_000).toISOString().slice(0, 10);
  const date = `${day} 00:00 UTC`;
  const since = ctx.mail.messages.length;
  const counts = async (p) => (await p.textContent('#enrollment')).replace(/\s+/g, ' ').trim();
  await check('henry (administrator of rollout.test) opens the domain card', async () => {
    await signIn(page, HENRY);
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
    await page.goto(`${BASE}/domain`);
    const said = await counts(page);
    expect(/^0 user\(s\) have set up 2-Step Authentication; 1 have not\.$/.test(said), said);
  });
  await check('Forced with a date asks for a confirmation naming the date and the sessions it drops', async () => {
    await page.selectOption('#status', 'forced');
    await page.fill('#forced_from', day);
    await page.click('form[action="/domain/two-step"] button');
    const main = (await page.textContent('main')).replace(/\s+/g, ' ');
    expect(main.includes(`From ${date}, users who have not set up 2-Step Authentication`), main.trim());
    expect(/mail session\(s\) that use a password now would be dropped/.test(main), main.trim());
  });
  await check('henry confirms: the card shows Forced from that date', async () => {
    await page.click('form[action="/domain/two-step"] button');
    expect(path_(page) === '/domain', `landed on ${path_(page)}`);
    const effective = (await page.textContent('#effective')).replace(/\s+/g, ' ');
    expect(effective.includes(`Forced from ${date}`), effective.trim());
    expect(await page.inputValue('#forced_from') === day, 'the date field does not show the date');
  });
  await shot(page, '26-domain-rollout-scheduled');
  const ivy = await newPage(ctx, DESKTOP);
  await check('ivy (not enrolled) signs in with her password and /account names the date', async () => {
    await signIn(ivy, IVY);
    expect(path_(ivy) === '/account', `landed on ${path_(ivy)}`);
    const notice = (await ivy.textContent('#rollout')).replace(/\s+/g, ' ');
    expect(notice.includes(`Your domain requires 2-Step Authentication from ${date}`), notice.trim());
  });
  await shot(ivy, '27-account-rollout-date');
  await check('the 2-Step page names the date too', async () => {
    await ivy.goto(`${BASE}/account/two-step`);
    const notice = (await ivy.textContent('#rollout')).replace(/\s+/g, ' ');
    expect(notice.includes(`from ${date}`), notice.trim());
  });
  await check('ivy is mailed the notice with the date and the steps', async () => {
    const mail = await ctx.mail.waitFor(IVY.address, { since });
    const text = mail.data.replace(/\r\n /g, ' ').replace(/=\r\n/g, '');
    expect(subjectOf({ data: text }).includes(`2-Step Authentication will be required from ${date}`), subjectOf({ data: text }));
    expect(text.includes(`Sign in at ${BASE}/ with your address ${IVY.address}`), text.slice(0, 600));
    expect(/create one for each device or mail app/.test(text), 'no app-password step');
    return subjectOf({ data: text });
  });
  await check('the card now counts ivy among the users without 2-Step', async () => {
    await page.reload();
    const said = await counts(page);
    expect(/^0 user\(s\) have set up 2-Step Authentication; 2 have not\.$/.test(said), said);
  });
  await ivy.context().close();
  await page.context().close();
});

// ---- a trusted browser skips the second step ---------------------------------

scenario('user trusts this browser at the second step, then forgets it', async (ctx) => {
  const page = await newPage(ctx, DESKTOP);
  let secret;
  let step;
  // example.test is Forced by now: frank enrolls before anything else, with the
  // key shown on the page (as erin does).
  await check('frank (example.test, Forced by now) enrolls with the key on the page', async () => {
    await signIn(page, FRANK);
    expect(path_(page) === '/login/enroll', `landed on ${path_(page)}`);
    secret = (await page.textContent('.secret')).replace(/\s/g, '');
    step = totpStep();
    await page.fill('#code', totp(secret, step));
    await page.click('form[action="/login/enroll"] button');
    expect(path_(page) === '/account/two-step', `landed on ${path_(page)}`);
  });
  await check('the second step offers "Don\'t ask again on this browser for 30 days"', async () => {
    await page.click('button:has-text("Sign out")');
    await signIn(page, FRANK);
    expect(path_(page) === '/login/code', `landed on ${path_(page)}`);
    expect(await page.locator('#remember').isVisible(), 'no checkbox');
    const label = await page.textContent('label:has(#remember)');
    expect(/Don't ask again on this browser for 30 days/.test(label), label);
  });
  await shot(page, '26-trust-this-browser');
  await check('frank ticks it and signs in with a code; the browser gets its own long-lived cookie', async () => {
    await page.check('#remember');
    // The next step's code (one step of drift is allowed): no wait on the clock.
    await page.fill('#code', totp(secret, step + 1));
    await page.click('form[action="/login/code"] button');
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
    const cookie = (await page.context().cookies()).find((c) => c.name === 'postern_trusted');
    expect(cookie, 'no postern_trusted cookie');
    expect(cookie.httpOnly && cookie.sameSite === 'Strict', `httpOnly=${cookie.httpOnly} sameSite=${cookie.sameSite}`);
    const days = (cookie.expires - Date.now() / 1000) / 86_400;
    expect(days > 29.9 && days <= 30, `expires in ${days.toFixed(2)} days`);
  });
  await check('signed out and in again, the password alone is enough on this browser', async () => {
    await page.click('button:has-text("Sign out")');
    expect(path_(page) === '/login', `landed on ${path_(page)}`);
    await signIn(page, FRANK);
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
  });
  await check('/account lists the browser as this browser, with its last use', async () => {
    const row = page.locator('#trusted-browsers tbody tr');
    expect(await row.count() === 1, `${await row.count()} rows`);
    const text = (await row.textContent()).replace(/\s+/g, ' ');
    expect(/Chrome on Linux/.test(text) && /\(this browser\)/.test(text), text);
    const lastUsed = await row.locator('td[data-label="Last used"]').textContent();
    expect(!/never/.test(lastUsed), `last used: ${lastUsed}`);
  });
  await shot(page, '27-trusted-browsers');
  await check('another browser is still asked for the second step', async () => {
    const other = await newPage(ctx, DESKTOP);
    await signIn(other, FRANK);
    expect(path_(other) === '/login/code', `landed on ${path_(other)}`);
    await other.context().close();
  });
  await check('Forget removes the browser, and the next sign-in asks for the second step again', async () => {
    await page.click('#trusted-browsers form[action$="/forget"] button');
    expect(path_(page) === '/account', `landed on ${path_(page)}`);
    expect(await page.locator('#trusted-browsers tbody tr').count() === 0, 'still listed');
    await page.click('button:has-text("Sign out")');
    await signIn(page, FRANK);
    expect(path_(page) === '/login/code', `landed on ${path_(page)}`);
  });
  await page.context().close();
});

// ---- security notices by e-mail ---------------------------------------------

scenario('a new app password is told to the user by e-mail, without the password', async (ctx) => {
  const GRACE = { address: 'grace@example.test', password: 'grace-primary' };
  const page = await newPage(ctx, DESKTOP);
  await check('grace (example.test, Forced by now) enrolls with the key shown on the page', async () => {
    await signIn(page, GRACE);
    expect(path_(page) === '/login/enroll', `landed on ${path_(page)}`);
    const secret = (await page.textContent('.secret')).replace(/\s/g, '');
    await page.fill('#code', totp(secret));
    await page.click('form[action="/login/enroll"] button');
    expect(path_(page) === '/account/two-step', `landed on ${path_(page)}`);
  });
  const since = ctx.mail.messages.length;
  let password = '';
  await check('grace creates an app password; the page answers at once with it', async () => {
    await page.goto(`${BASE}/account/app-passwords`);
    await page.fill('#name', 'Grace phone');
    await page.click('form[action="/account/app-passwords"] button');
    password = (await page.textContent('.secret')).trim();
    expect(/^[0-9a-z]{4}(-[0-9a-z]{4}){3,}$/.test(password), `shown: ${password}`);
  });
  await check('her mailbox is told: the device, when, from where, what to do; never the password', async () => {
    const mail = await ctx.mail.waitFor(GRACE.address, { since });
    expect(subjectOf(mail) === 'An application password was created', `subject: ${subjectOf(mail)}`);
    expect(mail.data.includes('"Grace phone"'), 'the device is not named');
    expect(/From the address: /.test(mail.data), 'no client address');
    expect(/If it was not you: /.test(mail.data), 'no advice');
    const bare = password.replace(/-/g, '');
    expect(!mail.data.includes(password) && !mail.data.includes(bare), 'the app password is in the mail');
  });
  await check('her domain administrator sees which notices are sent on the domain card', async () => {
    await ctx.alice.goto(`${BASE}/domain`);
    const on = await ctx.alice.isChecked('input[name="app-password-created"]');
    const off = await ctx.alice.isChecked('input[name="two-step-on"]');
    expect(on && !off, `app-password-created ${on}, two-step-on ${off}`);
  });
  await page.context().close();
});

// ---- run -------------------------------------------------------------------

fs.mkdirSync(SHOTS, { recursive: true });
if (TOUR) fs.mkdirSync(TOUR, { recursive: true });
const ctx = { cspErrors: [] };
let browser;
try {
  ctx.mail = await smtpSink(env('SMTP_SINK'));
  // launch() gives Chromium a fresh temporary profile (user-data-dir) and removes it.
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  ctx.browser = browser;
  for (const { name, run } of scenarios) {
    console.log(`# ${name}`);
    try {
      await run(ctx);
    } catch (err) {
      // A failed check has printed its line; anything else is reported here.
      if (!(err instanceof CheckFailed)) fail(name, err);
    }
  }
  await check('no page broke the Content-Security-Policy', async () => {
    expect(ctx.cspErrors.length === 0, ctx.cspErrors.join(' | '));
  }).catch(() => {});
} catch (err) {
  fail('browser scenarios start', err);
} finally {
  await browser?.close();
  await ctx.mail?.close();
  clearTimeout(watchdog);
}
const failed = failureCount();
console.log(failed === 0 ? '# all checks passed' : `# ${failed} check(s) failed`);
process.exit(failed === 0 ? 0 : 1);
