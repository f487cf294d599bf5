package cachestore

// Early writeback. A fill's bytes sit in the page cache until Commit's
// fsync, which then has the whole blob to write: ~120 ms for 60 MiB here,
// with several layers of one pull committing at once more, and the blob
// is visible to new requests (and a Range request for it answered) only
// after it. (Followers already streaming end at verification, before it.)
// Asking the kernel to start writing each chunk as soon as it is in place
// (sync_file_range(SYNC_FILE_RANGE_WRITE), which does not wait for the
// disk) spreads that work over the download, so Commit's fsync finds
// little left to do. It changes nothing about durability: Commit still
// fsyncs before the blob becomes visible.

// writebackChunk is how many new bytes of a fill are handed to writeback
// at once: big enough that the call costs nothing beside the bytes, small
// enough that little is left for Commit.
const writebackChunk = 4 << 20

// writeback hands [w.wbDone, upTo) to the kernel's writeback once it is at
// least writebackChunk long. Called by whoever advances Written (the
// filler's Write, or hashPrefix under hashMu), so never concurrently.
func (w *BlobWriter) writeback(upTo int64) {
	if w.s.noSync || upTo-w.wbDone < writebackChunk {
		return
	}
	startWriteback(w.f, w.wbDone, upTo-w.wbDone)
	w.wbDone = upTo
	w.writebacks++
}
