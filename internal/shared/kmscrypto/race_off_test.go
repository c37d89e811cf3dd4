//go:build !race

package kmscrypto

const raceEnabled = false
