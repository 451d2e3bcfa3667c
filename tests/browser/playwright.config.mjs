// Playwright for the console's browser tests. The server under test is
// started by host/tests/it/console.rs, which passes its address and keys in
// the environment; the browser is the system's Chromium (CHROMIUM), as
// Playwright's own downloads are not used.
import { defineConfig } from '@playwright/test';

for (const name of ['CONSOLE_BASE', 'SERVING_BASE', 'TENANT_KEY', 'ADMIN_KEY', 'CHROMIUM', 'SCREENSHOTS']) {
  if (!process.env[name]) {
    throw new Error(`${name} is not set: run these tests with \`cargo test console\` (host/tests/it/console.rs starts the server)`);
  }
}

export default defineConfig({
  testDir: '.',
  testMatch: '*.spec.mjs',
  // One server, one tenant: the scenarios build on each other in order.
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 60_000,
  expect: { timeout: 15_000 },
  outputDir: process.env.PLAYWRIGHT_OUTPUT || 'test-results',
  use: {
    baseURL: process.env.CONSOLE_BASE,
    headless: true,
    viewport: { width: 1280, height: 860 },
    launchOptions: {
      executablePath: process.env.CHROMIUM,
      // Root in a container has no user namespaces for Chromium's sandbox.
      args: ['--no-sandbox', '--disable-dev-shm-usage'],
    },
    trace: 'retain-on-failure',
    screenshot: 'only-on-failure',
  },
});
