// A real browser (Debian's Chromium, driven by playwright-core) for the
// sign-in tests, answering one JSON command per line on stdin with one
// JSON line on stdout:
//   {"op":"goto","url":U}            -> {url, status, text}
//   {"op":"signIn","login":L}        -> fills the provider's sign-in (and
//                                       consent) pages -> {url, status, text}
//   {"op":"cookies"}                 -> {cookies}
//   {"op":"callbacks"}               -> {urls}: every request to the
//                                       sign-in callback path so far
// $HOST_RULES maps test hostnames to loopback (Chromium's
// --host-resolver-rules); certificates are not checked (the test's CA).
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';

const modules = process.env.WEFT_NODE_MODULES;
const { chromium } = await import(
  pathToFileURL(path.join(modules, 'playwright-core/index.mjs')).href
);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    `--host-resolver-rules=${process.env.HOST_RULES || ''}`,
  ],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const page = await context.newPage();
const callbacks = [];
page.on('request', (request) => {
  if (request.url().includes(process.env.CALLBACK_PATH || '/oauth2/callback')) {
    callbacks.push(request.url());
  }
});

async function state(response) {
  return {
    url: page.url(),
    status: response ? response.status() : null,
    text: await page.locator('body').innerText().catch(() => ''),
  };
}

async function run(command) {
  switch (command.op) {
    case 'goto':
      return state(await page.goto(command.url, { waitUntil: 'load' }));
    case 'signIn': {
      await page.fill('input[name=login]', command.login);
      await page.fill('input[name=password]', command.password || 'secret');
      await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[type=submit]')]);
      // The consent page, the first time.
      const consent = page.locator('button[autofocus]');
      if (await consent.count()) {
        await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), consent.first().click()]);
      }
      return state(null);
    }
    case 'cookies':
      return { cookies: await context.cookies() };
    case 'callbacks':
      return { urls: callbacks };
    default:
      throw new Error(`unknown op ${command.op}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  try {
    answer = await run(JSON.parse(line));
  } catch (error) {
    const text = await page.locator('body').innerText().catch(() => '');
    answer = { error: String(error), url: page.url(), text };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
await browser.close();
