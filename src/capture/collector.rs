//! The capture collector: runs last in every sample, tells the capture
//! thread which interfaces to capture on (from the bridges and links the
//! sample just read) and copies the ring's counters into `sample.capture`.

use super::select;
use super::CaptureHandle;
use crate::collect::{CollectError, Collector, Context};
use crate::sample::Sample;

pub struct CaptureCollector {
    handle: CaptureHandle,
}

impl CaptureCollector {
    pub fn new(handle: CaptureHandle) -> Self {
        CaptureCollector { handle }
    }
}

impl Collector for CaptureCollector {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn collect(&mut self, _ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        // Without links or bridges this sample cannot say what to capture:
        // keep capturing what the last good one said.
        if sample.links.is_some() && sample.bridges.is_some() {
            self.handle
                .set_wanted(select::wanted(sample, self.handle.config()));
        }
        sample.capture = Some(self.handle.section());
        Ok(())
    }
}
