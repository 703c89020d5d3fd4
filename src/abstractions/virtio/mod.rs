// SPDX-License-Identifier: GPL-2.0

//! Virtio drivers: registration, the bus callbacks, devices and virtqueues.
//!
//! A driver implements [`Driver`] (a `#[vtable]` trait, as `net::phy` drivers do) and keeps a
//! [`Registration`] alive while it wants to be bound. The adapter owns the device's lifecycle and
//! its virtqueues, and tears down in the C drivers' order on every transport:
//! - probe: create the queues the driver declares ([`Driver::QUEUES`]), let the driver take them
//!   ([`Queues::take`]) and build its data, mark the device ready;
//! - remove: [`Driver::remove`] quiesces the driver; the adapter revokes the driver's
//!   [`Binding`] (no config access after this), resets the device, waits for running queue
//!   callbacks (`virtio_synchronize_cbs`: virtio-mmio's reset does not wait for them), takes
//!   back every queued buffer, deletes the queues, and only then drops the driver's data;
//! - freeze: [`Driver::freeze`], then the same teardown without dropping the data; restore:
//!   the queues are created again into the same slots, the device is marked ready, then
//!   [`Driver::restore`].
//!
//! Callbacks get the driver's data by reference; nothing the driver can do with it outlives
//! the adapter's teardown in a harmful way: queue handles and the binding are revocable.

mod device;
mod queue;

pub(crate) use device::{balloon, Binding, Bound, Core, Device};
pub(crate) use queue::{Buffer, DeviceWritable, OutBuf, Payload, QueueSpec, Queues, Virtqueue};

use core::{
    marker::PhantomData,
    ptr::NonNull,
    sync::atomic::{AtomicPtr, Ordering},
};
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox},
    bindings,
    error::{from_result, to_result},
    prelude::*,
    str::CStr,
    sync::Arc,
    types::Opaque,
    ThisModule,
};
use queue::{Slot, MAX_QUEUES};

/// A virtio driver.
#[vtable]
pub(crate) trait Driver: Sized + 'static {
    /// The driver's per-device data, created by [`Driver::probe`].
    type Data: Send + Sync;

    /// What the driver's [`Registration`] keeps for every probe (e.g. a debugfs directory).
    type Context: Send + Sync;

    /// The driver's name on the virtio bus.
    const NAME: &'static CStr;

    /// The virtio device id the driver binds to.
    const DEVICE_ID: u32;

    /// The device feature bits the driver offers to negotiate.
    const FEATURES: &'static [u32];

    /// The device's virtqueues, in the device type's order (at most 8).
    const QUEUES: &'static [QueueSpec];

    /// Checks or adjusts the offered features before they are finalised.
    fn validate(_dev: &Device<Core>) -> Result {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Sets up a newly bound device: takes its queues and builds the driver's data. `ctx` is the
    /// registration's context; `binding` gives work items the bound device while the driver is
    /// bound. The device is marked ready once this returns.
    fn probe(
        dev: &Device<Core>,
        ctx: &Self::Context,
        binding: &Arc<Binding>,
        queues: &mut Queues<'_>,
    ) -> Result<Self::Data>;

    /// Called once the device is ready, with the data from `probe`.
    fn ready(_dev: &Device<Bound>, _data: &Self::Data) {}

    /// Quiesces the driver before the device goes away (the queues still work); afterwards the
    /// adapter resets the device, takes back the queued buffers, deletes the queues and drops
    /// the data.
    fn remove(dev: &Device<Bound>, data: &Self::Data);

    /// The system suspends: quiesce (the queues still work). Afterwards the adapter resets the
    /// device, takes back the queued buffers and deletes the queues; the data stays.
    fn freeze(_dev: &Device<Core>, _data: &Self::Data) -> Result {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// The system resumed: the queues are back (empty) and the device is ready.
    fn restore(_dev: &Device<Core>, _data: &Self::Data) -> Result {
        kernel::build_error(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// The device's config space changed. Runs in atomic context.
    fn config_changed(_dev: &Device, _data: &Self::Data) {}

    /// The device used buffers of queue `queue` (its position in [`Driver::QUEUES`]). Runs in
    /// interrupt context.
    fn vq_done(_data: &Self::Data, _queue: usize) {}
}

/// What the adapter keeps for a bound device; `vdev->priv` points to it.
struct Bind<T: Driver> {
    /// Set once `probe` succeeded; callbacks before that find `None`.
    data: Option<T::Data>,
    binding: Arc<Binding>,
    slots: [Option<Arc<Slot>>; MAX_QUEUES],
}

/// Whether queue `q` of the driver exists on `dev`.
fn present(dev: &Device, q: &QueueSpec) -> bool {
    q.feature.map_or(true, |f| dev.has_feature(f))
}

/// Creates the queues `T` declares; absent ones (feature not negotiated) are `None`.
fn find_queues<T: Driver>(
    dev: &Device<Core>,
) -> Result<[Option<NonNull<bindings::virtqueue>>; MAX_QUEUES]> {
    let n = T::QUEUES.len();
    let mut vqs = [core::ptr::null_mut::<bindings::virtqueue>(); MAX_QUEUES];
    let mut infos = [bindings::virtqueue_info {
        name: core::ptr::null(),
        callback: None,
        ctx: false,
    }; MAX_QUEUES];
    for (info, q) in infos.iter_mut().zip(T::QUEUES) {
        if present(dev, q) {
            info.name = q.name.as_char_ptr();
            info.callback = Some(vq_callback::<T>);
        }
    }
    // SAFETY: The device is in a bus callback; both arrays hold `n <= MAX_QUEUES` entries
    // (checked at registration); the names are static or null (the core skips those).
    to_result(unsafe {
        bindings::virtio_find_vqs(
            dev.as_raw(),
            n as u32,
            vqs.as_mut_ptr(),
            infos.as_mut_ptr(),
            core::ptr::null_mut(),
        )
    })?;
    if vqs[..n]
        .iter()
        .zip(T::QUEUES)
        .any(|(vq, q)| vq.is_null() == present(dev, q))
    {
        delete_queues(dev);
        return Err(EINVAL);
    }
    Ok(vqs.map(NonNull::new))
}

/// Deletes the device's queues, if it has any.
fn delete_queues(dev: &Device<Core>) {
    let vdev = dev.as_raw();
    // SAFETY: In a bus callback the device and its transport are live; the queue list is only
    // changed by the transport under the bus callbacks, which are serialised.
    unsafe {
        let head = &raw mut (*vdev).vqs;
        if (*head).next != head {
            if let Some(del_vqs) = (*(*vdev).config).del_vqs {
                del_vqs(vdev);
            }
        }
    }
}

/// Resets the device, waits for running queue callbacks, takes back every queued buffer and
/// deletes the queues.
fn teardown_queues(dev: &Device<Core>, slots: &[Option<Arc<Slot>>; MAX_QUEUES]) {
    // SAFETY: In a bus callback the device is live. The reset stops the device from using the
    // queues; `virtio_synchronize_cbs` waits for callbacks already running (virtio-pci's reset
    // does, virtio-mmio's does not).
    unsafe {
        bindings::virtio_reset_device(dev.as_raw());
        bindings::virtio_synchronize_cbs(dev.as_raw());
    }
    for slot in slots.iter().flatten() {
        // SAFETY: The device is reset.
        unsafe { slot.revoke() };
    }
    delete_queues(dev);
}

/// The adapter's state of a device.
///
/// # Safety
///
/// `vdev` must be a live virtio device bound to driver `T`.
unsafe fn bind_of<'a, T: Driver>(vdev: *mut bindings::virtio_device) -> Option<&'a Bind<T>> {
    // SAFETY: `vdev` is live; `priv` is null or points to the `Bind<T>` that probe published
    // (with release ordering, see `publish`), freed only after the queues are deleted and `priv`
    // is cleared.
    unsafe {
        AtomicPtr::from_ptr(&raw mut (*vdev).priv_)
            .load(Ordering::Acquire)
            .cast::<Bind<T>>()
            .as_ref()
    }
}

/// Sets `priv`, which callbacks on other CPUs read.
///
/// # Safety
///
/// `vdev` must be live, and `bind` null or a `Bind` of the driver bound to it.
unsafe fn publish<T: Driver>(vdev: *mut bindings::virtio_device, bind: *mut Bind<T>) {
    // SAFETY: `vdev` is live; `priv` is an aligned pointer-sized field, only accessed atomically
    // by the adapter.
    unsafe { AtomicPtr::from_ptr(&raw mut (*vdev).priv_).store(bind.cast(), Ordering::Release) };
}

extern "C" fn vq_callback<T: Driver>(vq: *mut bindings::virtqueue) {
    // SAFETY: The virtio core passes a live queue of a live device.
    let (vdev, index) = unsafe { ((*vq).vdev, (*vq).index as usize) };
    // SAFETY: Queue callbacks run only between `find_queues` and the queues' deletion, while the
    // device is bound to `T` (the callback was registered for `T`).
    let Some(data) = (unsafe { bind_of::<T>(vdev) }).and_then(|b| b.data.as_ref()) else {
        return;
    };
    // SAFETY: As above, the device is live.
    let dev = unsafe { Device::<device::Normal>::from_raw(vdev) };
    // The device numbers present queues only; map back to the driver's list.
    if let Some((i, _)) = T::QUEUES
        .iter()
        .enumerate()
        .filter(|(_, q)| present(dev, q))
        .nth(index)
    {
        T::vq_done(data, i);
    }
}

extern "C" fn probe_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
    from_result(|| {
        // SAFETY: The bus calls probe with a live device, bound to us until remove returns.
        let dev = unsafe { Device::<Core>::from_raw(vdev) };
        let binding = Binding::new(dev)?;
        let vqs = find_queues::<T>(dev)?;
        let mut bind = match KBox::new(
            Bind::<T> {
                data: None,
                binding: binding.clone(),
                slots: Default::default(),
            },
            GFP_KERNEL,
        ) {
            Ok(bind) => bind,
            Err(e) => {
                delete_queues(dev);
                return Err(e.into());
            }
        };
        // SAFETY: The bus probes only devices it matched with a registered driver: `dev.driver`
        // points to the `struct device_driver` that starts the `virtio_driver` inside our
        // pinned `Registration<T>`, which stays registered (and in place) while devices are bound.
        let reg = unsafe {
            &*kernel::container_of!(
                (*vdev).dev.driver.cast::<Opaque<bindings::virtio_driver>>(),
                Registration<T>,
                drv
            )
        };
        let probed = T::probe(
            dev,
            &reg.context,
            &binding,
            &mut Queues {
                vqs: &vqs,
                slots: &mut bind.slots,
            },
        );
        let data = match probed {
            Ok(data) => data,
            Err(e) => {
                binding.revoke();
                teardown_queues(dev, &bind.slots);
                return Err(e);
            }
        };
        bind.data = Some(data);
        let bind = KBox::into_raw(bind);
        // SAFETY: `vdev` is live and `bind` is its state; the core leaves `priv` to the driver.
        // Callbacks see the state from now on, with its data set.
        unsafe { publish(vdev, bind) };
        // SAFETY: `vdev` is live and not yet marked ready (the core only does so after probe).
        unsafe { bindings::virtio_device_ready(vdev) };
        // SAFETY: `bind` was just published and is freed only in remove.
        if let Some(data) = unsafe { (*bind).data.as_ref() } {
            T::ready(dev, data);
        }
        Ok(0)
    })
}

extern "C" fn remove_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: The bus calls remove with the live device it probed.
    let dev = unsafe { Device::<Core>::from_raw(vdev) };
    // SAFETY: The device is bound to `T`; remove is the only place that frees the state.
    let Some(b) = (unsafe { bind_of::<T>(vdev) }) else {
        return;
    };
    let bind = core::ptr::from_ref(b).cast_mut();
    if let Some(data) = &b.data {
        T::remove(dev, data);
    }
    b.binding.revoke();
    teardown_queues(dev, &b.slots);
    // SAFETY: The queues are deleted, so no callback can see `priv` any more; config callbacks
    // were disabled by the core before remove.
    unsafe { publish::<T>(vdev, core::ptr::null_mut()) };
    // SAFETY: `bind` came from `KBox::into_raw` in probe; no reference to it is left.
    drop(unsafe { KBox::from_raw(bind) });
}

extern "C" fn freeze_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
    from_result(|| {
        // SAFETY: The bus calls freeze with a live, bound device.
        let dev = unsafe { Device::<Core>::from_raw(vdev) };
        // SAFETY: As above.
        let Some(b) = (unsafe { bind_of::<T>(vdev) }) else {
            return Ok(0);
        };
        if let Some(data) = &b.data {
            T::freeze(dev, data)?;
        }
        teardown_queues(dev, &b.slots);
        Ok(0)
    })
}

extern "C" fn restore_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
    from_result(|| {
        // SAFETY: The bus calls restore with a live, bound device, reset and with its features
        // negotiated again.
        let dev = unsafe { Device::<Core>::from_raw(vdev) };
        // SAFETY: As above.
        let Some(b) = (unsafe { bind_of::<T>(vdev) }) else {
            return Ok(0);
        };
        let vqs = find_queues::<T>(dev)?;
        if b.slots
            .iter()
            .zip(&vqs)
            .any(|(s, vq)| s.is_some() && vq.is_none())
        {
            // The features changed under us: a queue the driver uses is gone.
            delete_queues(dev);
            return Err(EINVAL);
        }
        for (slot, vq) in b.slots.iter().zip(vqs) {
            if let (Some(slot), Some(vq)) = (slot, vq) {
                // SAFETY: `vq` is a new, empty queue of the device, live until the next
                // teardown.
                unsafe { slot.arm(vq) };
            }
        }
        // SAFETY: `vdev` is live and its queues are set up.
        unsafe { bindings::virtio_device_ready(vdev) };
        if let Some(data) = &b.data {
            T::restore(dev, data)?;
        }
        Ok(0)
    })
}

extern "C" fn config_changed_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: The core calls this for a live device, only between probe and remove (config
    // callbacks are disabled before remove and during freeze).
    let (dev, bind) = unsafe { (Device::<device::Normal>::from_raw(vdev), bind_of::<T>(vdev)) };
    if let Some(data) = bind.and_then(|b| b.data.as_ref()) {
        T::config_changed(dev, data);
    }
}

extern "C" fn validate_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> core::ffi::c_int {
    // SAFETY: The core calls validate with a live device, before probe.
    let dev = unsafe { Device::<Core>::from_raw(vdev) };
    from_result(|| T::validate(dev).map(|()| 0))
}

/// The registration of a virtio driver with the virtio bus; unregisters on drop.
///
/// # Invariants
///
/// Once `registered` is set, `drv` is registered with the virtio bus and points to `ids`, which
/// do not move (the registration is pinned).
#[pin_data(PinnedDrop)]
pub(crate) struct Registration<T: Driver> {
    #[pin]
    drv: Opaque<bindings::virtio_driver>,
    ids: [bindings::virtio_device_id; 2],
    context: T::Context,
    /// Set once the bus accepted the driver: only then does drop unregister it.
    registered: bool,
    _driver: PhantomData<T>,
}

// SAFETY: Unregistering may happen from any thread; the context is `Send`.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: Shared references give access to the context only, which is `Sync`.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers driver `T` for the devices with id `T::DEVICE_ID`; every probe sees `context`.
    pub(crate) fn new(module: &'static ThisModule, context: T::Context) -> Result<Pin<KBox<Self>>> {
        // At most `MAX_QUEUES` queues, each depending on a feature the driver offers (or on
        // none): a queue of a feature that cannot be negotiated would never exist.
        if T::QUEUES.len() > MAX_QUEUES
            || T::QUEUES
                .iter()
                .filter_map(|q| q.feature)
                .any(|f| !T::FEATURES.contains(&f))
        {
            return Err(EINVAL);
        }
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
                context,
                registered: false,
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
            if T::HAS_FREEZE && T::HAS_RESTORE {
                (*drv).freeze = Some(freeze_callback::<T>);
                (*drv).restore = Some(restore_callback::<T>);
            }
        }
        // SAFETY: `drv` is fully initialised and will not move until it is unregistered in
        // `drop`.
        to_result(unsafe { bindings::__register_virtio_driver(drv, module.as_ptr()) })?;
        let mut this = this;
        // SAFETY: `registered` is not structurally pinned; nothing else moves.
        unsafe { this.as_mut().get_unchecked_mut().registered = true };
        // INVARIANT: registered above.
        Ok(this)
    }
}

#[pinned_drop]
impl<T: Driver> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        if self.registered {
            // SAFETY: The bus accepted the registration, which has not moved since.
            unsafe { bindings::unregister_virtio_driver(self.drv.get()) };
        }
    }
}
