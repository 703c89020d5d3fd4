// SPDX-License-Identifier: GPL-2.0

//! Virtio devices, in the contexts a driver sees them, and their config space.
//!
//! As in the upstream driver core (`kernel::device::Device<Ctx>` since 6.14), what a reference
//! to a device allows depends on a context type:
//! - [`Normal`]: any counted reference ([`ARef<Device>`]): the device's index and negotiated
//!   features, which live in the `struct virtio_device` itself.
//! - [`Bound`]: the driver is bound, so the transport's config space is mapped: typed config
//!   reads and writes. Only given out for the duration of a driver callback, or by
//!   [`Binding::with`], which stops giving it out once the driver is unbound.
//! - [`Core`]: inside `validate`, `probe`, `freeze` and `restore`, which the bus serialises: also
//!   changes to the feature bits.
//!
//! Safe code cannot read config space after unbind (a [`Binding`] is revoked before the adapter
//! returns from `remove`), cannot read a field the device may not have (fields of a feature are
//! only read when it was negotiated) and cannot read at an arbitrary offset (offsets come from
//! the C config layout).

use core::{marker::PhantomData, ptr::NonNull};
use kernel::{
    bindings, new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
    types::{ARef, AlwaysRefCounted, Opaque},
};

mod private {
    pub(crate) trait Sealed {}
}

/// The context a [`Device`] reference is valid in; see the module documentation.
pub(crate) trait DeviceContext: private::Sealed {}

/// Any counted reference: index and negotiated features.
pub(crate) struct Normal;
/// The driver is bound: config space access too.
pub(crate) struct Bound;
/// A bus callback that may change feature bits (`validate`, `probe`, `freeze`, `restore`).
pub(crate) struct Core;

impl private::Sealed for Normal {}
impl private::Sealed for Bound {}
impl private::Sealed for Core {}
impl DeviceContext for Normal {}
impl DeviceContext for Bound {}
impl DeviceContext for Core {}

/// A virtio device (`struct virtio_device`), in context `Ctx`.
///
/// # Invariants
///
/// The wrapped device is alive (its `struct device` has a reference) for as long as a reference
/// to this type exists. A `&Device<Bound>` exists only while the driver is bound (the transport's
/// config mapping is live); a `&Device<Core>` only inside a bus callback for the bound driver.
#[repr(transparent)]
pub(crate) struct Device<Ctx: DeviceContext = Normal>(
    Opaque<bindings::virtio_device>,
    PhantomData<Ctx>,
);

// SAFETY: The methods of `Device<Normal>` read fields fixed while the device is alive, or call
// functions that may be called from any thread.
unsafe impl Send for Device {}
// SAFETY: As above.
unsafe impl Sync for Device {}

impl<Ctx: DeviceContext> Device<Ctx> {
    /// # Safety
    ///
    /// `ptr` must point to a live virtio device that stays live for `'a`, in context `Ctx` (see
    /// the type invariants).
    pub(super) unsafe fn from_raw<'a>(ptr: *mut bindings::virtio_device) -> &'a Self {
        // SAFETY: `Device` is a transparent wrapper and the caller guarantees validity.
        unsafe { &*ptr.cast() }
    }

    pub(super) fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }
}

impl Device {
    /// The device's index on the virtio bus (the `N` of `virtioN`).
    pub(crate) fn index(&self) -> i32 {
        // SAFETY: The device is alive (type invariant); `index` is set at registration.
        unsafe { (*self.as_raw()).index }
    }

    /// Whether feature `bit` was negotiated (false for bits beyond 63).
    ///
    /// Tests the device's feature word directly: `virtio_has_feature()` also checks that the
    /// bound driver offered the bit, through `dev.driver`, which is gone after unbind.
    pub(crate) fn has_feature(&self, bit: u32) -> bool {
        if bit >= 64 {
            return false;
        }
        // SAFETY: The device is alive (type invariant); `features` is a plain word, written by
        // the core during probe and restore.
        let features = unsafe { core::ptr::read_volatile(&raw const (*self.as_raw()).features) };
        features & (1u64 << bit) != 0
    }

    /// Starts a wakeup event: the system does not suspend until [`Device::relax`] (each call
    /// pairs with one). Callable from any context; nothing without `CONFIG_PM_SLEEP`.
    pub(crate) fn stay_awake(&self) {
        #[cfg(CONFIG_PM_SLEEP)]
        // SAFETY: The device is alive; `pm_stay_awake` ignores devices without a wakeup source.
        unsafe {
            bindings::pm_stay_awake(&mut (*self.as_raw()).dev)
        };
    }

    /// Ends a wakeup event started by [`Device::stay_awake`].
    pub(crate) fn relax(&self) {
        #[cfg(CONFIG_PM_SLEEP)]
        // SAFETY: As in `stay_awake`.
        unsafe {
            bindings::pm_relax(&mut (*self.as_raw()).dev)
        };
    }
}

// SAFETY: `get_device`/`put_device` keep the `struct virtio_device` (which embeds the `struct
// device`) alive while a reference is held.
unsafe impl AlwaysRefCounted for Device {
    fn inc_ref(&self) {
        // SAFETY: The device is alive, so its `struct device` may take another reference.
        unsafe { bindings::get_device(&mut (*self.as_raw()).dev) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller gives back a reference taken by `inc_ref`.
        unsafe { bindings::put_device(&mut (*obj.cast::<bindings::virtio_device>().as_ptr()).dev) };
    }
}

impl core::ops::Deref for Device<Bound> {
    type Target = Device;

    fn deref(&self) -> &Device {
        // SAFETY: A bound device is alive; `Device<Ctx>` has the same layout for every `Ctx`.
        unsafe { Device::from_raw(self.as_raw()) }
    }
}

impl core::ops::Deref for Device<Core> {
    type Target = Device<Bound>;

    fn deref(&self) -> &Device<Bound> {
        // SAFETY: In a bus callback the driver is bound; same layout for every `Ctx`.
        unsafe { Device::from_raw(self.as_raw()) }
    }
}

/// A value a config field holds: little-endian, 1, 2 or 4 bytes, read or written with one
/// access of its width (virtio-pci requires it; 8-byte fields would need the generation counter
/// and are not offered).
pub(crate) trait ConfigValue: private::Sealed + Copy {
    /// Width in bytes.
    const SIZE: usize;
    /// Decodes the little-endian bytes `b[..SIZE]`.
    fn from_le(b: [u8; 4]) -> Self;
    /// Encodes into little-endian bytes `[..SIZE]`.
    fn to_le(self) -> [u8; 4];
}

impl private::Sealed for u8 {}
impl private::Sealed for u16 {}
impl private::Sealed for u32 {}

impl ConfigValue for u8 {
    const SIZE: usize = 1;
    fn from_le(b: [u8; 4]) -> Self {
        b[0]
    }
    fn to_le(self) -> [u8; 4] {
        [self, 0, 0, 0]
    }
}

impl ConfigValue for u16 {
    const SIZE: usize = 2;
    fn from_le(b: [u8; 4]) -> Self {
        u16::from_le_bytes([b[0], b[1]])
    }
    fn to_le(self) -> [u8; 4] {
        let b = self.to_le_bytes();
        [b[0], b[1], 0, 0]
    }
}

impl ConfigValue for u32 {
    const SIZE: usize = 4;
    fn from_le(b: [u8; 4]) -> Self {
        u32::from_le_bytes(b)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

/// A field of a device type's config space.
///
/// # Invariants
///
/// On a device of the type the field belongs to, `offset..offset + T::SIZE` lies inside the
/// config space whenever `feature` is `None` or negotiated, and is naturally aligned.
pub(crate) struct Field<T: ConfigValue> {
    offset: usize,
    feature: Option<u32>,
    _value: PhantomData<T>,
}

impl<T: ConfigValue> Field<T> {
    /// # Safety
    ///
    /// The field must satisfy the type invariants for the device type it is used with.
    const unsafe fn new(offset: usize, feature: Option<u32>) -> Self {
        Self {
            offset,
            feature,
            _value: PhantomData,
        }
    }
}

/// The balloon's config space (`struct virtio_balloon_config`), little-endian on every
/// transport, legacy included.
pub(crate) mod balloon {
    use super::Field;
    use core::mem::offset_of;
    use kernel::bindings::{self, virtio_balloon_config as C};

    // Each field is a `__le32` at its C offset; the optional ones exist only with their feature.

    /// The host's target, in 4 KiB pages.
    pub(crate) const NUM_PAGES: Field<u32> =
        // SAFETY: `num_pages` is part of every balloon's config space.
        unsafe { Field::new(offset_of!(C, num_pages), None) };

    /// The pages the driver holds, as it reports them.
    pub(crate) const ACTUAL: Field<u32> =
        // SAFETY: `actual` is part of every balloon's config space.
        unsafe { Field::new(offset_of!(C, actual), None) };

    /// The free page hinting command id.
    pub(crate) const FREE_PAGE_HINT_CMD_ID: Field<u32> =
        // SAFETY: The command id follows `actual`; devices offering free page hinting have it.
        unsafe {
            Field::new(
                offset_of!(C, __bindgen_anon_1),
                Some(bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            )
        };

    /// The smallest block the host wants inflated, as an order of 4 KiB pages
    /// (`VIRTIO_BALLOON_F_PAGE_RANGES`, `docs/spec/page-ranges.md`).
    pub(crate) const RANGES_MIN_ORDER: Field<u32> =
        // Like every optional field, this trusts the device to offer the bit only with the field
        // (a device using bit 16 otherwise, with a shorter config space, would trip virtio-pci's
        // `BUG_ON` in `vp_get`, as the C driver would for `poison_val`).
        // SAFETY: `ranges_min_order` follows `poison_val` (the end of the C struct); devices
        // offering page records have it (docs/spec/page-ranges.md).
        unsafe {
            Field::new(
                offset_of!(C, poison_val) + 4,
                Some(crate::proto::features::PAGE_RANGES),
            )
        };
}

impl Device<Bound> {
    /// Reads `field` with one access of its width; `None` when the field's feature was not
    /// negotiated (the device may not have it). May sleep on some transports.
    pub(crate) fn read<T: ConfigValue>(&self, field: &Field<T>) -> Option<T> {
        if field.feature.is_some_and(|f| !self.has_feature(f)) {
            return None;
        }
        let mut buf = [0u8; 4];
        // SAFETY: The driver is bound, so the transport's config ops and mapping are live (type
        // invariant); by `Field`'s invariant the access lies inside the config space.
        unsafe {
            let vdev = self.as_raw();
            let get = (*(*vdev).config).get?;
            get(
                vdev,
                field.offset as u32,
                buf.as_mut_ptr().cast(),
                T::SIZE as u32,
            );
        }
        Some(T::from_le(buf))
    }

    /// Writes `field` with one access of its width; `false` when the field's feature was not
    /// negotiated or the transport cannot write config space.
    pub(crate) fn write<T: ConfigValue>(&self, field: &Field<T>, value: T) -> bool {
        if field.feature.is_some_and(|f| !self.has_feature(f)) {
            return false;
        }
        let buf = value.to_le();
        // SAFETY: As in `read`.
        unsafe {
            let vdev = self.as_raw();
            let Some(set) = (*(*vdev).config).set else {
                return false;
            };
            set(
                vdev,
                field.offset as u32,
                buf.as_ptr().cast(),
                T::SIZE as u32,
            );
        }
        true
    }
}

impl Device<Core> {
    /// Lets the device's driver report wakeup events ([`Device::stay_awake`]), as the C balloon
    /// does so that a host request is not lost to a suspend starting meanwhile (once user space
    /// enables wakeup for the device, which creates its wakeup source).
    pub(crate) fn set_wakeup_capable(&self) {
        #[cfg(CONFIG_PM_SLEEP)]
        // SAFETY: In a bus callback the device is registered; this only adds its wakeup sysfs
        // attributes.
        unsafe {
            bindings::device_set_wakeup_capable(&mut (*self.as_raw()).dev, true)
        };
    }

    /// Clears a feature bit the device offered, so it is not negotiated. Only meaningful in
    /// `validate`, before features are finalised (elsewhere the device keeps what was
    /// negotiated and the driver merely stops seeing the bit). Bits beyond 63 are ignored.
    pub(crate) fn clear_feature(&self, bit: u32) {
        if bit >= 64 {
            return;
        }
        // SAFETY: In a bus callback the core lets the driver change the feature bits; `bit` is
        // below 64, as `__virtio_clear_bit` requires.
        unsafe { bindings::__virtio_clear_bit(self.as_raw(), bit) };
    }
}

/// The binding of a driver to a device, for work items: gives the bound device out while the
/// driver is bound, and never after (revocable, as `Devres` is upstream).
///
/// # Invariants
///
/// While `bound` holds `true` the driver is bound to `dev`; the adapter sets it to `false`
/// (waiting for every holder) before the driver's `remove` returns to the bus.
#[pin_data]
pub(crate) struct Binding {
    dev: ARef<Device>,
    #[pin]
    bound: Mutex<bool>,
}

impl Binding {
    pub(super) fn new(dev: &Device) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                dev: ARef::from(dev),
                bound <- new_mutex!(true, "virtio::Binding::bound"),
            }),
            GFP_KERNEL,
        )
    }

    /// The device, with what any reference allows.
    pub(crate) fn device(&self) -> &Device {
        &self.dev
    }

    /// Runs `f` with the bound device; `None` once the driver is unbound. Holds a mutex while
    /// `f` runs (unbinding waits for it), so `f` must not wait for the driver's removal.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&Device<Bound>) -> R) -> Option<R> {
        let bound = self.bound.lock();
        if !*bound {
            return None;
        }
        // SAFETY: `bound` is true and stays so while we hold its lock (type invariant), so the
        // driver is bound for the duration of `f`.
        Some(f(unsafe { Device::from_raw(self.dev.as_raw()) }))
    }

    /// Stops giving the device out, after every running [`Self::with`] has returned.
    pub(super) fn revoke(&self) {
        *self.bound.lock() = false;
    }
}
