//! Mapping a buffer for reading as a future, the same code natively (where `device.poll`
//! drives the callback) and in the browser (where the JS event loop does).

use crate::error::GpuError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Slot {
    result: Option<Result<(), String>>,
    waker: Option<Waker>,
}

/// Resolves when `map_async` on `slice` completes.
pub(crate) struct MapFuture {
    slot: Arc<Mutex<Slot>>,
}

impl MapFuture {
    pub(crate) fn new(slice: &wgpu::BufferSlice<'_>) -> MapFuture {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let s = slot.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut g) = s.lock() {
                g.result = Some(r.map_err(|e| e.to_string()));
                if let Some(w) = g.waker.take() {
                    w.wake();
                }
            }
        });
        MapFuture { slot }
    }
}

impl Future for MapFuture {
    type Output = Result<(), GpuError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut g) = self.slot.lock() else {
            return Poll::Ready(Err(GpuError::Readback("map state poisoned".into())));
        };
        match g.result.take() {
            Some(r) => Poll::Ready(r.map_err(GpuError::Readback)),
            None => {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
