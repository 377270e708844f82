// The command line of the node checks: run `check(dir)` on every bundle folder given, print "ok <what it
// returns>" or "FAIL <dir>: <error>" per bundle, and exit non-zero if any failed.
export async function eachBundle(dirs, check) {
  let failed = 0;
  for (const dir of dirs) {
    try {
      console.log(`ok ${await check(dir)}`);
    } catch (err) {
      failed += 1;
      console.log(`FAIL ${dir}: ${err.message}`);
    }
  }
  process.exit(failed ? 1 : 0);
}
