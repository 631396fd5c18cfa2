#!/usr/bin/env node
// Drives Debian's chromium (headless, through puppeteer-core) on the status
// page of sessionwatchd for tests/integration/test_page.py.
//
//   node page-test.js URL OUTDIR
//
// Opens URL in a fresh profile, then reads commands from standard input, one
// JSON object per line, and answers each with one JSON line on standard
// output: {"ok":true,"value":...} or {"ok":false,"error":"..."}. The first
// line written is {"ok":true,"ready":true,...} once the page has loaded (or
// {"ok":false,...} when the browser or the page could not be opened).
//
// Commands ({"cmd": NAME, ...}):
//   wait     {fn, arg?, timeout?}  wait until the page function `fn` (the
//            source of a JS function, called with `arg`) returns a truthy
//            value and answer that value; an error at the deadline (ms)
//   eval     {fn, arg?}            call `fn` in the page once and answer its value
//   select   {selector, value}     choose an option of a <select> (fires change)
//   type     {selector, text}      replace an input's text by typing it
//   press    {key}                 press a key (e.g. "Enter")
//   click    {selector}            click an element
//   screenshot {name, fullPage?}   save OUTDIR/NAME (PNG), answer its path
//   report   {}                    what the page did so far: console messages,
//            uncaught errors, failed requests, HTTP errors, dialogs, CSP reports
//   quit     {}                    close the browser and exit 0
//
// The browser is never downloaded: it is /usr/bin/chromium unless
// SW_CHROMIUM names another one.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');
const puppeteer = require('puppeteer-core');

const CHROMIUM = process.env.SW_CHROMIUM || '/usr/bin/chromium';
const [url, outdir] = process.argv.slice(2);

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function main() {
  if (!url || !outdir) {
    reply({ ok: false, error: 'usage: page-test.js URL OUTDIR' });
    process.exit(2);
  }
  fs.mkdirSync(outdir, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-chromium-'));
  const seen = { console: [], pageErrors: [], failedRequests: [], httpErrors: [], dialogs: [], requests: [] };
  let browser = null;

  const cleanup = async () => {
    if (browser) {
      const b = browser;
      browser = null;
      await b.close().catch(() => {});
    }
    fs.rmSync(profile, { recursive: true, force: true });
  };

  try {
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      userDataDir: profile,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--disable-default-apps', '--disable-extensions', '--no-default-browser-check',
        '--window-size=1400,1000',
      ],
      defaultViewport: { width: 1400, height: 1000 },
      protocolTimeout: 60000,
    });
    const page = await browser.newPage();
    page.on('console', (msg) => {
      const loc = msg.location() || {};
      seen.console.push({ type: msg.type(), text: msg.text(), url: loc.url || null });
    });
    page.on('pageerror', (err) => seen.pageErrors.push(String(err && err.stack ? err.stack : err)));
    page.on('requestfailed', (req) => {
      const failure = req.failure();
      seen.failedRequests.push({ url: req.url(), method: req.method(), error: failure ? failure.errorText : null });
    });
    page.on('request', (req) => seen.requests.push({ url: req.url(), method: req.method(), at: Date.now() / 1000 }));
    page.on('response', (res) => {
      if (res.status() >= 400) seen.httpErrors.push({ url: res.url(), status: res.status() });
    });
    page.on('dialog', async (dialog) => {
      seen.dialogs.push({ type: dialog.type(), message: dialog.message() });
      await dialog.dismiss().catch(() => {});
    });

    const response = await page.goto(url, { waitUntil: 'load', timeout: 30000 });
    reply({ ok: true, ready: true, status: response ? response.status() : null,
            headers: response ? response.headers() : {}, browser: await browser.version() });

    const commands = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
    for await (const line of commands) {
      if (!line.trim()) continue;
      let command;
      try {
        command = JSON.parse(line);
      } catch (err) {
        reply({ ok: false, error: 'not JSON: ' + err.message });
        continue;
      }
      if (command.cmd === 'quit') break;
      try {
        reply({ ok: true, value: await run(page, command, seen) });
      } catch (err) {
        reply({ ok: false, error: String(err && err.message ? err.message : err) });
      }
    }
    await cleanup();
    reply({ ok: true, value: 'bye' });
    process.exit(0); // standard input may still be open
  } catch (err) {
    reply({ ok: false, error: String(err && err.stack ? err.stack : err) });
    await cleanup();
    process.exitCode = 1;
  }
}

// A page function given as source text: "(arg) => ...".
function pageFunction(source) {
  return `(${source})`;
}

async function run(page, command, seen) {
  switch (command.cmd) {
    case 'wait': {
      const timeout = command.timeout || 10000;
      const handle = await page.waitForFunction(
        `${pageFunction(command.fn)}(${JSON.stringify(command.arg === undefined ? null : command.arg)})`,
        { timeout, polling: 50 });
      const value = await handle.jsonValue();
      await handle.dispose();
      return value;
    }
    case 'eval':
      return page.evaluate(`${pageFunction(command.fn)}(${JSON.stringify(command.arg === undefined ? null : command.arg)})`);
    case 'select':
      return page.select(command.selector, command.value);
    case 'type': {
      await page.$eval(command.selector, (node) => { node.focus(); node.select(); });
      await page.keyboard.press('Backspace');
      await page.type(command.selector, command.text);
      return null;
    }
    case 'press':
      await page.keyboard.press(command.key);
      return null;
    case 'click':
      await page.click(command.selector);
      return null;
    case 'screenshot': {
      const file = path.join(outdir, path.basename(command.name || 'page.png'));
      await page.screenshot({ path: file, fullPage: command.fullPage !== false, type: 'png' });
      return file;
    }
    case 'report':
      return seen;
    default:
      throw new Error('unknown command ' + JSON.stringify(command.cmd));
  }
}

main();
