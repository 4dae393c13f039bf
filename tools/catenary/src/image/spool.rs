//! File contents of all layers, appended to one scratch file in the staging directory (never at
//! a path a layer chose). The merged tree refers to slices of it; the squashfs writer reads them
//! back through `Slice`. Keeps memory flat whatever the image size.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{io_err, Result};
use super::tree::Data;

pub struct Spool {
    path: PathBuf,
    file: io::BufWriter<File>,
    len: u64,
}

impl Spool {
    pub fn create(path: &Path) -> Result<Spool> {
        let file = File::options().read(true).write(true).create_new(true).open(path).map_err(io_err(path))?;
        Ok(Spool { path: path.to_path_buf(), file: io::BufWriter::with_capacity(1 << 20, file), len: 0 })
    }

    /// Append exactly `len` bytes from `r` (a short read is an error: the tar lied about a size).
    pub fn append(&mut self, r: &mut dyn Read, len: u64) -> io::Result<Data> {
        let offset = self.len;
        let n = io::copy(&mut r.take(len), &mut self.file)?;
        if n != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("entry data ends after {n} of {len} bytes")));
        }
        self.len += len;
        Ok(Data { offset, len })
    }

    /// Flush and turn the spool into a shared read-only handle for the writer.
    pub fn finish(self) -> Result<Arc<File>> {
        let path = self.path;
        let f = self.file.into_inner().map_err(|e| io_err(&path)(e.into_error()))?;
        f.sync_data().ok();
        Ok(Arc::new(f))
    }
}

/// One file's bytes inside the spool, as a reader.
pub struct Slice {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Slice {
    pub fn new(file: Arc<File>, data: Data) -> Slice {
        Slice { file, pos: data.offset, end: data.offset + data.len }
    }
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spool shorter than recorded"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
