// A real browser (Debian's Chromium, driven by playwright-core) for the
// sign-in tests, answering one JSON command per line on stdin with one
// JSON line on stdout:
//   {"op":"goto","url":U}            -> {url, status, text}
//   {"op":"signIn","login":L}        -> fills the provider's sign-in (and
//                                       consent) pages -> {url, status, text}
//   {"op":"cookies"}                 -> {cookies}
//   {"op":"callbacks"}               -> {urls}: every request to the
//                                       sign-in callback path so far
//   {"op":"fill","selector":S,"value":V}   types V into S
//   {"op":"submit","selector":S}     clicks S and waits for the page it
//                                       loads -> {url, status, text}
//   {"op":"press","key":K}           presses a key (no navigation wait)
//   {"op":"texts","selector":S}      -> {texts}: innerText of each match
//   {"op":"attrs","selector":S,"name":N}   -> {values}: attribute N of each
//   {"op":"screenshot","path":P}     saves a full-page PNG
//   {"op":"axe"}                     -> {violations}: axe-core's serious and
//                                       critical findings on this page
//   {"op":"problems"}                -> {problems}: console errors, failed
//                                       requests and 4xx/5xx answers for
//                                       assets since the last ask
//   {"op":"firstPaint"}              -> {ms}: first contentful paint
// $HOST_RULES maps test hostnames to loopback (Chromium's
// --host-resolver-rules); certificates are not checked (the test's CA).
import fs from 'node:fs/promises';
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
const context = await browser.newContext({
  ignoreHTTPSErrors: true,
  viewport: { width: 1280, height: 800 },
});
const page = await context.newPage();
const callbacks = [];
let problems = [];
page.on('console', (message) => {
  if (message.type() === 'error') problems.push(`console: ${message.text()}`);
});
page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
page.on('requestfailed', (request) => {
  // A live page's refresh cut short by navigating away is not a failure.
  const why = request.failure()?.errorText || '';
  if (!why.includes('ERR_ABORTED')) problems.push(`request failed: ${request.url()} ${why}`);
});
page.on('response', (response) => {
  const type = response.request().resourceType();
  if (response.status() >= 400 && ['stylesheet', 'script', 'image', 'font'].includes(type)) {
    problems.push(`asset ${response.url()} answered ${response.status()}`);
  }
});
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
    case 'fill':
      await page.fill(command.selector, command.value);
      return {};
    case 'submit': {
      const [response] = await Promise.all([
        page.waitForNavigation({ waitUntil: 'load' }),
        page.click(command.selector),
      ]);
      return state(response);
    }
    case 'press':
      await page.keyboard.press(command.key);
      return {};
    case 'texts':
      return { texts: await page.locator(command.selector).allInnerTexts() };
    case 'attrs':
      return {
        values: await page
          .locator(command.selector)
          .evaluateAll((nodes, name) => nodes.map((n) => n.getAttribute(name)), command.name),
      };
    case 'screenshot':
      await page.screenshot({ path: command.path, fullPage: true });
      return {};
    case 'axe': {
      // Evaluated over the DevTools protocol, which the page's content
      // security policy does not govern (an injected <script> it would).
      const source = await fs.readFile(path.join(modules, 'axe-core/axe.min.js'), 'utf8');
      await page.evaluate(source);
      const result = await page.evaluate(() =>
        window.axe.run(document, { resultTypes: ['violations'] }),
      );
      return {
        violations: result.violations
          .filter((v) => v.impact === 'serious' || v.impact === 'critical')
          .map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) })),
      };
    }
    case 'problems': {
      const found = problems;
      problems = [];
      return { problems: found };
    }
    case 'firstPaint': {
      const ms = await page.evaluate(() => {
        const paint = performance.getEntriesByName('first-contentful-paint')[0];
        return paint ? paint.startTime : null;
      });
      return { ms };
    }
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
