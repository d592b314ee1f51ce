//! Known-answer tests of the packet cipher: NIST SP 800-38A CTR vectors, McGrew–Viega GCM test
//! cases and the Wycheproof AES-GCM suite, all through the project's own implementation.

use ferry_engine::crypto::{Aead, aes_ctr32_apply};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

const SP800_38A_PLAIN: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                               30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

#[test]
fn nist_sp800_38a_ctr_vectors() {
    // F.5.1, F.5.3, F.5.5 (the decrypt vectors F.5.2/4/6 are the same transform reversed).
    let cases = [
        (
            "2b7e151628aed2a6abf7158809cf4f3c",
            "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff\
             5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
        ),
        (
            "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
            "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e94\
             1e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050",
        ),
        (
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5\
             2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6",
        ),
    ];
    let counter: [u8; 16] = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
    for (key, ct) in cases {
        let mut buf = h(SP800_38A_PLAIN);
        aes_ctr32_apply(&h(key), &counter, &mut buf).unwrap();
        assert_eq!(hex::encode(&buf), hex::encode(h(ct)), "encrypt, key {key}");
        aes_ctr32_apply(&h(key), &counter, &mut buf).unwrap();
        assert_eq!(buf, h(SP800_38A_PLAIN), "decrypt, key {key}");
    }
}

/// McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 1-4, 7-10, 13-16.
#[test]
fn mcgrew_viega_gcm_test_cases() {
    let p3 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
              1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    let p4 = &p3[..120];
    let a4 = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    let iv = "cafebabefacedbaddecaf888";
    let k128 = "feffe9928665731c6d6a8f9467308308";
    let k192 = "feffe9928665731c6d6a8f9467308308feffe9928665731c";
    let k256 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    let z = "000000000000000000000000";
    let zero16 = "00".repeat(16);
    let c3 = "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
              21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985";
    let c9 = "3980ca0b3c00e841eb06fac4872a2757859e1ceaa6efd984628593b40ca1e19c\
              7d773d00c144c525ac619d18c84a3f4718e2448b2fe324d9ccda2710acade256";
    let c15 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
               8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
    // (test case, key, iv, plaintext, aad, ciphertext, tag)
    let cases: Vec<(u32, String, &str, &str, &str, String, &str)> = vec![
        (1, "00".repeat(16), z, "", "", String::new(), "58e2fccefa7e3061367f1d57a4e7455a"),
        (
            2,
            "00".repeat(16),
            z,
            &zero16,
            "",
            "0388dace60b6a392f328c2b971b2fe78".into(),
            "ab6e47d42cec13bdf53a67b21257bddf",
        ),
        (3, k128.into(), iv, p3, "", c3.into(), "4d5c2af327cd64a62cf35abd2ba6fab4"),
        (4, k128.into(), iv, p4, a4, c3[..120].into(), "5bc94fbc3221a5db94fae95ae7121a47"),
        (7, "00".repeat(24), z, "", "", String::new(), "cd33b28ac773f74ba00ed1f312572435"),
        (
            8,
            "00".repeat(24),
            z,
            &zero16,
            "",
            "98e7247c07f0fe411c267e4384b0f600".into(),
            "2ff58d80033927ab8ef4d4587514f0fb",
        ),
        (9, k192.into(), iv, p3, "", c9.into(), "9924a7c8587336bfb118024db8674a14"),
        (10, k192.into(), iv, p4, a4, c9[..120].into(), "2519498e80f1478f37ba55bd6d27618c"),
        (13, "00".repeat(32), z, "", "", String::new(), "530f8afbc74536b9a963b4f1c4cb738b"),
        (
            14,
            "00".repeat(32),
            z,
            &zero16,
            "",
            "cea7403d4d606b6e074ec5d3baf39d18".into(),
            "d0d1c8a799996bf0265b98b5d48ab919",
        ),
        (15, k256.into(), iv, p3, "", c15.into(), "b094dac5d93471bdec1a502270e3cc6c"),
        (16, k256.into(), iv, p4, a4, c15[..120].into(), "76fc6ece0f4e1768cddf8853bb2d551b"),
    ];
    for (tc, key, iv, p, a, c, t) in cases {
        // Both backends: the RustCrypto composition and the default (ring for 128/256 bits).
        let backends = [Aead::composed(&h(&key)).unwrap(), Aead::new(&h(&key)).unwrap()];
        for gcm in &backends {
            let nonce: [u8; 12] = h(iv).try_into().unwrap();
            let mut buf = h(p);
            let tag = gcm.seal(&nonce, &h(a), &mut buf);
            assert_eq!(hex::encode(&buf), c, "test case {tc}: ciphertext");
            assert_eq!(hex::encode(tag), t, "test case {tc}: tag");
            assert!(gcm.open(&nonce, &h(a), &mut buf, &tag).is_ok(), "test case {tc}: open");
            assert_eq!(buf, h(p), "test case {tc}: decrypt");
            if p.is_empty() {
                assert_eq!(hex::encode(gcm.mac(&nonce, &h(a))), t, "test case {tc}: GMAC");
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct Suite {
    #[serde(rename = "testGroups")]
    groups: Vec<Group>,
}

#[derive(serde::Deserialize)]
struct Group {
    #[serde(rename = "ivSize")]
    iv_size: usize,
    #[serde(rename = "tagSize")]
    tag_size: usize,
    tests: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    #[serde(rename = "tcId")]
    id: u32,
    key: String,
    iv: String,
    aad: String,
    msg: String,
    ct: String,
    tag: String,
    result: String,
}

/// Every Wycheproof AES-GCM case with a 96-bit nonce and 128-bit tag (the only parameters Ferry
/// uses): valid cases must seal to the stated ciphertext and tag and open; invalid ones must not
/// open.
#[test]
fn wycheproof_aes_gcm() {
    let suite: Suite =
        serde_json::from_str(include_str!("data/wycheproof/aes_gcm_test.json")).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in suite.groups.iter().filter(|g| g.iv_size == 96 && g.tag_size == 128) {
        for case in &group.tests {
            let key = h(&case.key);
            let backends = [Aead::composed(&key).unwrap(), Aead::new(&key).unwrap()];
            for gcm in &backends {
                let nonce: [u8; 12] = h(&case.iv).try_into().unwrap();
                let tag: [u8; 16] = h(&case.tag).try_into().unwrap();
                let mut buf = h(&case.ct);
                let opened = gcm.open(&nonce, &h(&case.aad), &mut buf, &tag).is_ok();
                match case.result.as_str() {
                    "valid" => {
                        assert!(opened, "tcId {} must open", case.id);
                        assert_eq!(buf, h(&case.msg), "tcId {} plaintext", case.id);
                        let mut sealed = h(&case.msg);
                        let t = gcm.seal(&nonce, &h(&case.aad), &mut sealed);
                        assert_eq!((sealed, t), (h(&case.ct), tag), "tcId {} seal", case.id);
                        valid += 1;
                    }
                    "invalid" => {
                        assert!(!opened, "tcId {} must not open", case.id);
                        assert!(
                            buf.iter().all(|&b| b == 0),
                            "tcId {}: no plaintext released",
                            case.id
                        );
                        invalid += 1;
                    }
                    other => panic!("tcId {}: unexpected result {other}", case.id),
                }
            }
        }
    }
    assert!(valid >= 100 && invalid >= 40, "ran {valid} valid and {invalid} invalid cases");
}
