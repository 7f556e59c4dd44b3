//! The guest's /init (issues 3 and 5).

fn main() {
    println!("KRUN_INIT_STARTED");
}
