package stall

// NextChunk is nextChunk, for the external tests.
var NextChunk = nextChunk
