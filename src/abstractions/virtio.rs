// SPDX-License-Identifier: GPL-2.0

//! Virtio drivers: registration, devices, config space, feature bits and virtqueues.
//!
//! A driver implements [`Driver`] (a `#[vtable]` trait, as `net::phy` drivers do) and keeps a
//! [`Registration`] alive while it wants to be bound. The adapter owns the device's lifecycle:
//! after [`Driver::remove`] returns it resets the device, drops the driver's data (and with it
//! the [`Virtqueue`]s, which take back every buffer still queued) and only then deletes the
//! virtqueues.

use super::free_area::HintBlocks;
use core::{marker::PhantomData, mem::MaybeUninit, ptr::NonNull};
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox},
    bindings,
    error::{from_result, to_result},
    prelude::*,
    str::CStr,
    types::{ForeignOwnable, Opaque},
    ThisModule,
};

/// A virtio device (`struct virtio_device`).
///
/// # Invariants
///
/// The wrapped device is a live virtio device for as long as a reference to this type exists.
#[repr(transparent)]
pub(crate) struct Device(Opaque<bindings::virtio_device>);

impl Device {
    /// # Safety
    ///
    /// `ptr` must point to a live virtio device that stays live for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::virtio_device) -> &'a Self {
        // SAFETY: `Device` is a transparent wrapper and the caller guarantees validity.
        unsafe { &*ptr.cast() }
    }

    fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// The device's index on the virtio bus (the `N` of `virtioN`).
    pub(crate) fn index(&self) -> i32 {
        // SAFETY: The device is live (type invariant); `index` is set at registration.
        unsafe { (*self.as_raw()).index }
    }

    /// Whether feature `bit` was negotiated.
    pub(crate) fn has_feature(&self, bit: u32) -> bool {
        // SAFETY: The device is live (type invariant).
        unsafe { bindings::virtio_has_feature(self.as_raw(), bit) }
    }

    /// Reads a little-endian 32-bit field of the device's config space.
    pub(crate) fn read_config_le32(&self, offset: usize) -> u32 {
        let mut buf = [0u8; 4];
        // SAFETY: The device is live and `buf` is valid for 4 bytes of writes. The transport
        // bounds-checks `offset` against the config space it has.
        unsafe {
            bindings::virtio_cread_bytes(self.as_raw(), offset as _, buf.as_mut_ptr().cast(), 4)
        };
        u32::from_le_bytes(buf)
    }

    /// Writes a little-endian 32-bit field of the device's config space.
    pub(crate) fn write_config_le32(&self, offset: usize, value: u32) {
        let buf = value.to_le_bytes();
        // SAFETY: The device is live and `buf` is valid for 4 bytes of reads.
        unsafe {
            bindings::virtio_cwrite_bytes(self.as_raw(), offset as _, buf.as_ptr().cast(), 4)
        };
    }

    /// Creates the device's virtqueues, one for each name, in order. A `None` name leaves its
    /// slot out (its feature was not negotiated) and the later queues move up, as in C. Every
    /// queue's used-buffer notifications go to [`Driver::vq_done`] with the queue's index.
    pub(crate) fn find_vqs<T: Driver, const N: usize>(
        &self,
        names: [Option<&'static CStr>; N],
    ) -> Result<[Option<RawVirtqueue>; N]> {
        let mut vqs = [core::ptr::null_mut::<bindings::virtqueue>(); N];
        let mut infos = names.map(|name| bindings::virtqueue_info {
            name: name.map_or(core::ptr::null(), CStr::as_char_ptr),
            callback: Some(vq_callback::<T>),
            ctx: false,
        });
        // SAFETY: The device is live; both arrays hold `N` entries; the names are static or null
        // (the core skips those).
        to_result(unsafe {
            bindings::virtio_find_vqs(
                self.as_raw(),
                N as u32,
                vqs.as_mut_ptr(),
                infos.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        })?;
        if vqs
            .iter()
            .zip(&names)
            .any(|(vq, name)| vq.is_null() != name.is_none())
        {
            return Err(EINVAL);
        }
        // INVARIANT: `find_vqs` succeeded, so every queue lives until `del_vqs`.
        Ok(vqs.map(|vq| NonNull::new(vq).map(RawVirtqueue)))
    }

    /// Clears a feature bit the device offered, so it is not negotiated. Only meaningful in
    /// [`Driver::validate`], before features are finalised.
    pub(crate) fn clear_feature(&self, bit: u32) {
        // SAFETY: The device is live; during validation the driver owns the feature bits.
        unsafe { bindings::__virtio_clear_bit(self.as_raw(), bit) };
    }

    /// A counted reference to the device, usable from work items until [`Driver::remove`]
    /// returns.
    pub(crate) fn get(&self) -> DeviceRef {
        // SAFETY: The device is live; `get_device` takes a reference on its `struct device`.
        unsafe { bindings::get_device(&mut (*self.as_raw()).dev) };
        // INVARIANT: we took a reference that `DeviceRef::drop` gives back.
        DeviceRef(NonNull::from(self).cast())
    }
}

/// A counted reference to a virtio device.
///
/// # Invariants
///
/// Holds a reference on the device's `struct device`, so its memory stays valid. The device is
/// live (bound to the driver) until the driver's [`Driver::remove`] returns; a driver keeps these
/// in its data and stops using them before then.
pub(crate) struct DeviceRef(NonNull<bindings::virtio_device>);

// SAFETY: Virtio device methods may be called from any thread.
unsafe impl Send for DeviceRef {}
// SAFETY: As above; `Device` has no interior state of its own.
unsafe impl Sync for DeviceRef {}

impl core::ops::Deref for DeviceRef {
    type Target = Device;

    fn deref(&self) -> &Device {
        // SAFETY: By the type invariant the device is valid while the driver is bound.
        unsafe { Device::from_raw(self.0.as_ptr()) }
    }
}

impl Drop for DeviceRef {
    fn drop(&mut self) {
        // SAFETY: We hold a reference taken by `Device::get`.
        unsafe { bindings::put_device(&mut (*self.0.as_ptr()).dev) };
    }
}

/// A virtqueue fresh from [`Device::find_vqs`], to be turned into a typed [`Virtqueue`].
///
/// # Invariants
///
/// Points to a virtqueue that lives until the adapter deletes the device's queues.
pub(crate) struct RawVirtqueue(NonNull<bindings::virtqueue>);

/// What a buffer shows the device.
pub(crate) enum Payload<'a> {
    /// Bytes the device reads. They must lie inside the buffer itself (they are checked); the
    /// buffer is boxed, so they do not move while it is queued.
    Out(&'a [u8]),
    /// Free blocks the driver owns (isolated from the allocator), adjacent ones merged into one
    /// device-writable scatter-gather entry each, as the free page hinting protocol sends
    /// them: the device takes them as hints and never writes them. They stay owned, so out of
    /// the allocator, until the device has used the buffer.
    FreePages(&'a mut HintBlocks),
}

/// A buffer that a [`Virtqueue`] carries to the device.
pub(crate) trait Buffer {
    /// What the device is shown.
    fn payload(&mut self) -> Payload<'_>;
}

/// A virtqueue carrying boxed buffers of type `B` to the device.
///
/// Adding a buffer moves its box into the queue; the device's completion gives it back. Buffers
/// still queued when the queue is dropped are taken back (after resetting the device if it was
/// not reset already), so none leaks and the device never touches freed memory.
///
/// # Invariants
///
/// `vq` is a live virtqueue of a bound device. `in_flight` counts the buffers queued and not yet
/// returned; each was queued with the raw pointer of a `KBox<B>` as its token.
pub(crate) struct Virtqueue<B: Buffer> {
    vq: NonNull<bindings::virtqueue>,
    in_flight: usize,
    _buffers: PhantomData<KBox<B>>,
}

// SAFETY: Virtqueue operations may run on any thread; `&mut self` serialises them as the virtio
// core requires.
unsafe impl<B: Buffer + Send> Send for Virtqueue<B> {}
// SAFETY: Shared references only allow reading the ring size.
unsafe impl<B: Buffer + Send> Sync for Virtqueue<B> {}

impl<B: Buffer> Virtqueue<B> {
    /// Types a raw virtqueue.
    pub(crate) fn new(raw: RawVirtqueue) -> Self {
        Self {
            vq: raw.0,
            in_flight: 0,
            _buffers: PhantomData,
        }
    }

    /// Number of descriptors in the ring.
    pub(crate) fn ring_size(&self) -> u32 {
        // SAFETY: `vq` is live (type invariant).
        unsafe { bindings::virtqueue_get_vring_size(self.vq.as_ptr()) }
    }

    /// Number of buffers queued and not yet returned.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `buf` for the device; on failure (ring full, bad buffer) gives it back.
    pub(crate) fn add(&mut self, mut buf: KBox<B>) -> core::result::Result<(), (Error, KBox<B>)> {
        let inner = &*buf as *const B as usize;
        let mut one = MaybeUninit::<bindings::scatterlist>::uninit();
        let (sg, num, out) = match buf.payload() {
            Payload::Out(bytes) => {
                let start = bytes.as_ptr() as usize;
                if bytes.is_empty()
                    || start < inner
                    || start + bytes.len() > inner + core::mem::size_of::<B>()
                {
                    return Err((EINVAL, buf));
                }
                // SAFETY: `one` is valid for writes; `start` is inside a kmalloc'd box, so it has
                // a struct page in the linear map, and `len` bytes from it belong to the box.
                unsafe {
                    bindings::sg_init_one(
                        one.as_mut_ptr(),
                        start as *const core::ffi::c_void,
                        bytes.len() as u32,
                    )
                };
                (one.as_mut_ptr(), 1, true)
            }
            Payload::FreePages(ranges) => match ranges.build_sg() {
                Some((sg, num)) => (sg, num, false),
                None => return Err((EINVAL, buf)),
            },
        };
        let token = KBox::into_raw(buf);
        // The core copies the entries into the ring; out entries point into the box, in entries
        // are free blocks the box owns until the buffer comes back.
        // SAFETY: `vq` is live; `sg` holds `num` initialised entries; the token is the box's
        // pointer, which stays valid until the queue gives it back.
        let ret = unsafe {
            if out {
                bindings::virtqueue_add_outbuf(
                    self.vq.as_ptr(),
                    sg,
                    num,
                    token.cast(),
                    bindings::GFP_KERNEL,
                )
            } else {
                bindings::virtqueue_add_inbuf(
                    self.vq.as_ptr(),
                    sg,
                    num,
                    token.cast(),
                    bindings::GFP_KERNEL,
                )
            }
        };
        if ret < 0 {
            // SAFETY: The queue did not take the token, so we still own the box.
            let buf = unsafe { KBox::from_raw(token) };
            return Err((Error::from_errno(ret), buf));
        }
        // INVARIANT: one more buffer queued with a box pointer as token.
        self.in_flight += 1;
        Ok(())
    }

    /// Notifies the device of newly queued buffers.
    pub(crate) fn kick(&mut self) {
        // SAFETY: `vq` is live and `&mut self` serialises queue operations.
        unsafe { bindings::virtqueue_kick(self.vq.as_ptr()) };
    }

    /// Notifies the device even if the ring says it does not want to be (`virtqueue_notify`
    /// without `virtqueue_kick_prepare`). A device that stopped polling without turning
    /// notifications back on, as a live migration leaves the free page queue, then looks at the
    /// buffers it has not used yet.
    pub(crate) fn notify(&mut self) {
        // SAFETY: `vq` is live and `&mut self` serialises queue operations.
        unsafe { bindings::virtqueue_notify(self.vq.as_ptr()) };
    }

    /// Takes back a buffer the device has used, with the length the device says it wrote.
    pub(crate) fn get_used(&mut self) -> Option<(KBox<B>, u32)> {
        let mut len = 0u32;
        // SAFETY: `vq` is live and `&mut self` serialises queue operations.
        let token = unsafe { bindings::virtqueue_get_buf(self.vq.as_ptr(), &mut len) };
        let token = NonNull::new(token.cast::<B>())?;
        self.in_flight -= 1;
        // SAFETY: Every token on this queue is a `KBox<B>` pointer (type invariant), returned
        // exactly once by the virtio core.
        Some((unsafe { KBox::from_raw(token.as_ptr()) }, len))
    }
}

impl<B: Buffer> Drop for Virtqueue<B> {
    fn drop(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        // SAFETY: `vq` is live. Resetting the device (again, if the adapter already did) makes it
        // stop using every buffer, which is what `virtqueue_detach_unused_buf` requires.
        unsafe { bindings::virtio_reset_device((*self.vq.as_ptr()).vdev) };
        loop {
            // SAFETY: The device is reset; `vq` is live.
            let token = unsafe { bindings::virtqueue_detach_unused_buf(self.vq.as_ptr()) };
            let Some(token) = NonNull::new(token.cast::<B>()) else {
                break;
            };
            // SAFETY: Tokens are `KBox<B>` pointers (type invariant), detached exactly once.
            drop(unsafe { KBox::from_raw(token.as_ptr()) });
        }
        self.in_flight = 0;
    }
}

/// The borrowed form of a driver's data inside callbacks.
pub(crate) type Borrowed<'a, T> = <<T as Driver>::Data as ForeignOwnable>::Borrowed<'a>;

/// A virtio driver.
#[vtable]
pub(crate) trait Driver: Sized + 'static {
    /// The driver's per-device data, created by [`Driver::probe`].
    type Data: ForeignOwnable + Send + Sync;

    /// The driver's name on the virtio bus.
    const NAME: &'static CStr;

    /// The virtio device id the driver binds to.
    const DEVICE_ID: u32;

    /// The device feature bits the driver offers to negotiate.
    const FEATURES: &'static [u32];

    /// Checks or adjusts the offered features before they are finalised.
    fn validate(_dev: &Device) -> Result {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Sets up a newly bound device: its virtqueues and the driver's data. The device is marked
    /// ready once this returns.
    fn probe(dev: &Device) -> Result<Self::Data>;

    /// Called once the device is ready, with the data from `probe`.
    fn ready(_dev: &Device, _data: Borrowed<'_, Self>) {}

    /// Quiesces the driver before the device goes away: after this returns the adapter resets
    /// the device, drops the data (and the virtqueues in it) and deletes the queues.
    fn remove(dev: &Device, data: Borrowed<'_, Self>);

    /// The device's config space changed. Runs in atomic context.
    fn config_changed(_dev: &Device, _data: Borrowed<'_, Self>) {}

    /// The device used buffers of queue `index`. Runs in interrupt context.
    fn vq_done(_data: Borrowed<'_, Self>, _index: u32) {}
}

extern "C" fn vq_callback<T: Driver>(vq: *mut bindings::virtqueue) {
    // SAFETY: The virtio core passes a live queue of a live device.
    let (vdev, index) = unsafe { ((*vq).vdev, (*vq).index) };
    // SAFETY: As above; `priv_` is written before the device is ready and cleared after it is
    // reset (which waits for running callbacks).
    let data = unsafe { (*vdev).priv_ };
    if data.is_null() {
        return;
    }
    // SAFETY: `priv_` holds the driver's data, converted by `into_foreign` in `probe_callback`,
    // and not released while callbacks can run.
    T::vq_done(unsafe { T::Data::borrow(data) }, index);
}

fn delete_queues(vdev: *mut bindings::virtio_device) {
    // SAFETY: `vdev` is a live device; the reset stops it from using queues and callbacks; the
    // queue list is only read here, after the driver stopped using its queues.
    unsafe {
        bindings::virtio_reset_device(vdev);
        let head = &mut (*vdev).vqs as *mut bindings::list_head;
        if (*head).next != head {
            bindings::virtio_del_vqs(vdev);
        }
    }
}

extern "C" fn probe_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
    from_result(|| {
        // SAFETY: The bus calls probe with a live device that stays live until remove.
        let dev = unsafe { Device::from_raw(vdev) };
        let data = match T::probe(dev) {
            Ok(data) => data,
            Err(e) => {
                delete_queues(vdev);
                return Err(e);
            }
        };
        let ptr = data.into_foreign();
        // SAFETY: `vdev` is live; the core leaves `priv` to the driver.
        unsafe { (*vdev).priv_ = ptr as *mut core::ffi::c_void };
        // SAFETY: `vdev` is live and not yet marked ready (the core only does so after probe).
        unsafe { bindings::virtio_device_ready(vdev) };
        // SAFETY: `ptr` came from `into_foreign` above and is released only in remove.
        T::ready(dev, unsafe { T::Data::borrow(ptr) });
        Ok(0)
    })
}

extern "C" fn remove_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: The bus calls remove with the live device it probed.
    let dev = unsafe { Device::from_raw(vdev) };
    // SAFETY: `vdev` is live.
    let ptr = unsafe { (*vdev).priv_ };
    // SAFETY: `ptr` came from `into_foreign` in probe.
    T::remove(dev, unsafe { T::Data::borrow(ptr) });
    // SAFETY: `vdev` is live. The reset waits for running callbacks and stops new ones, so no
    // borrow of the data remains once `priv` is cleared.
    unsafe {
        bindings::virtio_reset_device(vdev);
        (*vdev).priv_ = core::ptr::null_mut();
    }
    // SAFETY: `ptr` came from `into_foreign` and no borrow of it is left.
    drop(unsafe { T::Data::from_foreign(ptr) });
    delete_queues(vdev);
}

extern "C" fn config_changed_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: The core calls this for a live, probed device.
    let (dev, ptr) = unsafe { (Device::from_raw(vdev), (*vdev).priv_) };
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` holds the driver's data until remove, and config callbacks are disabled
    // before remove is called.
    T::config_changed(dev, unsafe { T::Data::borrow(ptr) });
}

extern "C" fn validate_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
    // SAFETY: The core calls validate with a live device.
    let dev = unsafe { Device::from_raw(vdev) };
    from_result(|| T::validate(dev).map(|()| 0))
}

/// The registration of a virtio driver with the virtio bus; unregisters on drop.
///
/// # Invariants
///
/// `drv` is registered with the virtio bus and points to `ids`, which do not move (the
/// registration is pinned).
#[pin_data(PinnedDrop)]
pub(crate) struct Registration<T: Driver> {
    #[pin]
    drv: Opaque<bindings::virtio_driver>,
    ids: [bindings::virtio_device_id; 2],
    _driver: PhantomData<T>,
}

// SAFETY: Unregistering may happen from any thread.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: Shared references give no access to the registration.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers driver `T` for the devices with id `T::DEVICE_ID`.
    pub(crate) fn new(module: &'static ThisModule) -> Result<Pin<KBox<Self>>> {
        let this = KBox::pin(
            Self {
                // SAFETY: All-zero is a valid `virtio_driver` (null pointers and callbacks).
                drv: Opaque::new(unsafe { core::mem::zeroed() }),
                ids: [
                    bindings::virtio_device_id {
                        device: T::DEVICE_ID,
                        vendor: bindings::VIRTIO_DEV_ANY_ID,
                    },
                    bindings::virtio_device_id {
                        device: 0,
                        vendor: 0,
                    },
                ],
                _driver: PhantomData,
            },
            GFP_KERNEL,
        )?;
        let drv = this.drv.get();
        // SAFETY: `drv` is valid for writes and pinned with `ids`; the callbacks match the C
        // prototypes; `NAME` and `FEATURES` are static.
        unsafe {
            (*drv).driver.name = T::NAME.as_char_ptr();
            (*drv).id_table = this.ids.as_ptr();
            (*drv).feature_table = T::FEATURES.as_ptr();
            (*drv).feature_table_size = T::FEATURES.len() as u32;
            if T::HAS_VALIDATE {
                (*drv).validate = Some(validate_callback::<T>);
            }
            (*drv).probe = Some(probe_callback::<T>);
            (*drv).remove = Some(remove_callback::<T>);
            (*drv).config_changed = Some(config_changed_callback::<T>);
        }
        // SAFETY: `drv` is fully initialised and will not move until it is unregistered in
        // `drop`.
        to_result(unsafe { bindings::__register_virtio_driver(drv, module.as_ptr()) })?;
        // INVARIANT: registered above.
        Ok(this)
    }
}

#[pinned_drop]
impl<T: Driver> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: By the type invariant the driver is registered.
        unsafe { bindings::unregister_virtio_driver(self.drv.get()) };
    }
}
