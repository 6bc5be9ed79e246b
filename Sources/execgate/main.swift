print("execgate")
