//! A cache entry read back from shared data (another worker, another configuration, another
//! plugin on the VM id may have written the slot).
#![no_main]
use certbound::cache::{decode, encode, Seal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let seal = Seal::new("fingerprint", "secret");
    let _ = seal.open(data);
    if let Some(entry) = decode(data) {
        // What decodes encodes to bytes that decode to the same entry.
        let again = decode(&encode(&entry)).expect("an encoded entry decodes");
        assert_eq!(encode(&again), encode(&entry));
    }
});
