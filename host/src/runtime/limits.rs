//! Per-instance resource limits.

use wasmtime::ResourceLimiter;

/// Caps an instance's linear memory and tables, and remembers the largest memory it reached.
#[derive(Debug)]
pub struct MemoryLimiter {
    cap_bytes: usize,
    high_water_bytes: usize,
    exceeded: bool,
}

impl MemoryLimiter {
    /// A limiter allowing at most `cap_bytes` of linear memory per memory.
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            cap_bytes,
            high_water_bytes: 0,
            exceeded: false,
        }
    }

    /// The largest memory size the instance has asked for and got.
    pub fn high_water_bytes(&self) -> usize {
        self.high_water_bytes
    }

    /// Whether the instance tried to grow past its cap (it trapped).
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// The cap, in bytes.
    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes
    }
}

/// Table entries allowed per table; far above what compiled Rust guests use.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            self.exceeded = true;
            wasmtime::bail!(
                "memory limit exceeded: the plugin asked for {desired} bytes, the cap is {} bytes",
                self.cap_bytes
            );
        }
        self.high_water_bytes = self.high_water_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
