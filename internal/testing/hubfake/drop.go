package hubfake

// DropEvery returns a DropBlobs function that drops about fraction of all
// blob GETs. Whether GET n is dropped depends only on seed and n, not on
// call order or timing, so concurrent tests see the same drops every run.
func DropEvery(fraction float64, seed int64) func(n int) bool {
	return func(n int) bool {
		// splitmix64 of seed and n: a well-mixed 64-bit value, of which
		// the top 53 bits make a uniform float in [0, 1).
		z := uint64(seed) + uint64(n)*0x9e3779b97f4a7c15
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		return float64(z>>11)/(1<<53) < fraction
	}
}
