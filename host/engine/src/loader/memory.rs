//! Whether the weights' destination shares physical memory with the host, and what loading does
//! about the file's pages then. On a discrete GPU the weights are copied into the card's own
//! memory and the checkpoint's pages in the host's page cache cost nothing but spare RAM (and
//! make the next load of the same model fast), so they are kept. On a GPU that shares the
//! host's memory (GB10 in a DGX Spark: 128 GB for both) and on the CPU, every page of the file
//! kept in the cache is a second copy of a weight in the same memory: a 14B bf16 model would
//! hold 56 GB instead of 28 GB. There each tensor's file range is dropped from the cache as soon
//! as its copy exists, so a load never holds more than one tensor twice.

use candle_core::Device;

/// What happens to a checkpoint's file pages once a tensor has been copied out of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCache {
    /// Leave them to the kernel (discrete GPUs).
    Keep,
    /// Drop them from the page cache (unified memory, the CPU).
    Release,
}

impl FileCache {
    /// The policy for weights loaded onto `device`.
    pub fn for_device(device: &Device) -> FileCache {
        if shares_host_memory(device) {
            FileCache::Release
        } else {
            FileCache::Keep
        }
    }
}

/// Whether tensors on `device` live in the host's memory: the CPU, or a GPU that reports itself
/// integrated (`CU_DEVICE_ATTRIBUTE_INTEGRATED`, set on GB10). An attribute that cannot be read
/// counts as discrete, the cautious answer for a card of its own.
pub fn shares_host_memory(device: &Device) -> bool {
    match device {
        Device::Cpu => true,
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
            dev.cuda_stream()
                .context()
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)
                .is_ok_and(|integrated| integrated == 1)
        }
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Drops `len` bytes of `file` at `offset` from the page cache (Unix; a no-op elsewhere). Clean
/// pages go at once; the file is read again if they are needed.
pub(super) fn release(file: &std::fs::File, offset: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: advice on an open descriptor; it changes no memory of this process.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}
