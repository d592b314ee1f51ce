//! The AES-256-GCM used for segments, behind one small interface so the backend can be chosen
//! at build time without touching the format: RustCrypto `aes-gcm` (default) or, with the
//! `ring-gcm` feature, ring's fused AES-GCM (about 3× faster here; see BENCHMARKS.md).
//! Both are standard AES-256-GCM with 96-bit IVs and 16-byte tags.

#[cfg(not(feature = "ring-gcm"))]
mod imp {
    use aes_gcm::aead::consts::U12;
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce, Tag};

    /// An AES-256-GCM key schedule.
    #[derive(Clone)]
    pub(crate) struct Gcm(Aes256Gcm);

    impl Gcm {
        pub(crate) fn new(key: &[u8; 32]) -> Self {
            Gcm(Aes256Gcm::new_from_slice(key).expect("32-byte key"))
        }

        pub(crate) fn seal(&self, iv: [u8; 12], aad: &[u8], body: &mut [u8]) -> [u8; 16] {
            let tag = self
                .0
                .encrypt_inout_detached(&Nonce::<U12>::from(iv), aad, body.into())
                .expect("segments are within GCM limits");
            tag.into()
        }

        pub(crate) fn open(
            &self,
            iv: [u8; 12],
            aad: &[u8],
            body: &mut [u8],
            tag: [u8; 16],
        ) -> bool {
            self.0
                .decrypt_inout_detached(&Nonce::<U12>::from(iv), aad, body.into(), &Tag::from(tag))
                .is_ok()
        }
    }
}

#[cfg(feature = "ring-gcm")]
mod imp {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

    /// An AES-256-GCM key schedule.
    pub(crate) struct Gcm(LessSafeKey);

    impl Gcm {
        pub(crate) fn new(key: &[u8; 32]) -> Self {
            Gcm(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key")))
        }

        pub(crate) fn seal(&self, iv: [u8; 12], aad: &[u8], body: &mut [u8]) -> [u8; 16] {
            let tag = self
                .0
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), body)
                .expect("segments are within GCM limits");
            tag.as_ref().try_into().expect("16-byte tag")
        }

        pub(crate) fn open(
            &self,
            iv: [u8; 12],
            aad: &[u8],
            body: &mut [u8],
            tag: [u8; 16],
        ) -> bool {
            self.0
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(aad),
                    Tag::from(tag),
                    body,
                    0..,
                )
                .is_ok()
        }
    }
}

pub(crate) use imp::Gcm;
