from boxui.cli import main

main()
