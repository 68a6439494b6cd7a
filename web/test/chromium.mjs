// How the package's browser tests and the browser benchmark launch Debian's Chromium
// (playwright-core never downloads a browser here).
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

// Options for chromium.launch / chromium.launchServer. --disable-gpu as in
// runtime/webdriver.json: WebGPU then runs on SwiftShader in the GPU process (which
// --enable-unsafe-swiftshader allows: Chromium 148 under chromedriver found no adapter without it); without it
// Chromium's Vulkan path here (Mesa lavapipe) never finished a pass. The background-networking
// flags keep Chromium off the (closed) network.
export const LAUNCH = {
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
};
