//! `nimbus-init`: the first process inside an instance's sandbox; see
//! [`nimbus::sandbox_init`].

fn main() {
    nimbus::sandbox_init::run(std::env::args().skip(1))
}
