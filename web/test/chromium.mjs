// How the package's browser tests and the browser benchmark launch Debian's Chromium
// (playwright-core never downloads a browser here).
import fs from "node:fs";
import path from "node:path";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

// Options for chromium.launch / chromium.launchServer: the flags of runtime/webdriver.json (the
// wasm-bindgen-test runs), one list for both, less --headless=new (playwright sets headless
// itself). Why: --disable-gpu puts WebGPU on
// SwiftShader in the GPU process (--enable-unsafe-swiftshader allows it: Chromium 148 under
// chromedriver found no adapter without it; Chromium's Vulkan path here, Mesa lavapipe, never
// finished a pass), and the background-networking flags keep Chromium off the (closed) network.
const webdriver = JSON.parse(fs.readFileSync(path.join(import.meta.dirname, "../../runtime/webdriver.json"), "utf8"));
export const LAUNCH = {
  executablePath: CHROMIUM,
  headless: true,
  args: webdriver["goog:chromeOptions"].args.filter((a) => !a.startsWith("--headless")),
};
