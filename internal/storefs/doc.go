// Package storefs owns what ferry does to store objects on disk, in one
// place for the add, import, build, repair and garbage-collection paths:
// giving a tree the metadata of a store object as Nix 2.8 does
// (Canonicalise), deleting one (Delete, DiskUsage) and making one durable
// (Sync, SyncFS).
//
// It works on real file system paths and knows nothing of store paths or
// the database.
package storefs
