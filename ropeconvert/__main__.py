from ropeconvert.cli import main

main()
