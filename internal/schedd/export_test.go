package schedd

// PeerClient is peerClient for the external tests' TestMain.
var PeerClient = peerClient
