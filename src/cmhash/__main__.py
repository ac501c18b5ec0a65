from cmhash.cli import main

main()
