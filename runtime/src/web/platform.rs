//! What the loader needs from the browser, from a window or a worker alike: fetch, Cache
//! Storage, the storage manager, timers, and JS errors as text.

use js_sys::{Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

pub(crate) enum Scope {
    Window(web_sys::Window),
    Worker(web_sys::WorkerGlobalScope),
}

pub(crate) fn scope() -> Result<Scope, String> {
    let global = js_sys::global();
    if let Some(w) = global.dyn_ref::<web_sys::Window>() {
        Ok(Scope::Window(w.clone()))
    } else if let Some(w) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        Ok(Scope::Worker(w.clone()))
    } else {
        Err("neither a window nor a worker".into())
    }
}

impl Scope {
    pub(crate) fn fetch(&self, req: &web_sys::Request) -> Promise {
        match self {
            Scope::Window(w) => w.fetch_with_request(req),
            Scope::Worker(w) => w.fetch_with_request(req),
        }
    }

    /// Cache Storage; absent in insecure contexts (an error there).
    pub(crate) fn caches(&self) -> Result<web_sys::CacheStorage, JsValue> {
        match self {
            Scope::Window(w) => w.caches(),
            Scope::Worker(w) => w.caches(),
        }
    }

    pub(crate) fn storage(&self) -> web_sys::StorageManager {
        match self {
            Scope::Window(w) => w.navigator().storage(),
            Scope::Worker(w) => w.navigator().storage(),
        }
    }

    /// Resolves after `ms` milliseconds.
    pub(crate) async fn sleep(&self, ms: i32) {
        let p = Promise::new(&mut |resolve, _| {
            let _ = match self {
                Scope::Window(w) => w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms),
                Scope::Worker(w) => w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms),
            };
        });
        let _ = JsFuture::from(p).await;
    }
}

impl Scope {
    /// What `p` settles to, or None when it has not settled within `ms` milliseconds.
    pub(crate) async fn within(&self, p: &Promise, ms: i32) -> Result<Option<JsValue>, JsValue> {
        let mut handle = None;
        // Resolves with `undefined`, which neither fetch nor a stream read ever does.
        let timer = Promise::new(&mut |resolve, _| {
            handle = match self {
                Scope::Window(w) => w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms).ok(),
                Scope::Worker(w) => w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms).ok(),
            };
        });
        let r = JsFuture::from(Promise::race(&js_sys::Array::of2(p, &timer))).await;
        if let Some(h) = handle {
            match self {
                Scope::Window(w) => w.clear_timeout_with_handle(h),
                Scope::Worker(w) => w.clear_timeout_with_handle(h),
            }
        }
        let v = r?;
        Ok(if v.is_undefined() { None } else { Some(v) })
    }
}

/// A thrown JS value as text: `Error.message` (with its name), else its string form.
pub(crate) fn js_message(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return format!("{}: {}", String::from(err.name()), String::from(err.message()));
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// Whether a thrown value is a DOMException named `name` (QuotaExceededError, AbortError…).
pub(crate) fn is_dom_error(e: &JsValue, name: &str) -> bool {
    Reflect::get(e, &"name".into()).ok().and_then(|n| n.as_string()).as_deref() == Some(name)
}

/// `obj[key]` as a number, when it is one.
pub(crate) fn get_f64(obj: &JsValue, key: &str) -> Option<f64> {
    Reflect::get(obj, &key.into()).ok().and_then(|v| v.as_f64())
}
