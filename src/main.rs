fn main() {
    println!("hvflight");
}
